"""SmolVLA speed options: each exact saving against LeRobot's recorded cases; what approximate ones do."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.parity import load_cases
from dysta_ros.policy.smolvla import load_smolvla
from dysta_ros.policy.smolvla.policy import SmolVLASession, warm_start_noise
from dysta_ros.policy.devices import native_bfloat16
from dysta_ros.policy.speed import SpeedOptions, split_speed_options
from dysta_ros.policy.vision_reuse import ChangedTokenEncoder, siglip_tower

DATA = Path(__file__).parents[1] / "data"
TINY, OTHER = DATA / "smolvla_tiny", DATA / "smolvla_other"


@pytest.fixture(scope="module")
def tiny():
    return load_smolvla(TINY / "checkpoint", TINY / "vlm")


@pytest.fixture(scope="module")
def cases():
    return load_cases(TINY)


def _inputs(policy, meta, arrays, index):
    images = {n: arrays[f"case{index}.image.{n}"] for n in policy.spec.camera_names}
    return images, arrays[f"case{index}.state"], meta["cases"][index]["task"], arrays[f"case{index}.noise"]


@pytest.mark.parametrize("fixture", [TINY, OTHER])
def test_the_default_path_without_pads_matches_lerobot(fixture):
    # the default path drops padded language slots and uses the per-chunk denoising plan
    policy = load_smolvla(fixture / "checkpoint", fixture / "vlm")
    meta, arrays = load_cases(fixture)
    dropped = []
    for index in range(len(meta["cases"])):
        images, state, task, noise = _inputs(policy, meta, arrays, index)
        _, info = policy.predict(images, state, task, noise=torch.from_numpy(noise))
        _, padded = policy.predict(images, state, task, noise=torch.from_numpy(noise),
                                   return_intermediates=True)
        ref = arrays[f"case{index}.actions_normalized"][0]
        assert np.abs(info["actions_normalized"] - ref).max() <= 1e-5
        layout = padded["intermediates"]["prefix_pad_mask"]
        assert info["prefix_tokens"] == int(layout.sum()) <= layout.shape[1]
        dropped.append(layout.shape[1] - info["prefix_tokens"])
    if fixture == TINY:  # max_length padding: the pads of the short tasks really left
        assert max(dropped) > 30


def test_an_identical_frame_reuses_its_tokens_exactly(tiny, cases):
    meta, arrays = cases
    images, state, task, noise = _inputs(tiny, meta, arrays, 0)
    other_images, other_state, _, other_noise = _inputs(tiny, meta, arrays, 1)
    session = SmolVLASession()
    tiny.predict(images, state, task, noise=torch.from_numpy(noise), session=session)
    # same frames, another state and noise: both cameras reused, numbers as a fresh encode
    mixed = {"front": images["front"].copy(), "wrist": other_images["wrist"]}
    _, warm = tiny.predict(mixed, other_state, task, noise=torch.from_numpy(other_noise), session=session)
    _, fresh = tiny.predict(mixed, other_state, task, noise=torch.from_numpy(other_noise))
    assert warm["frames_reused"] == 1 and fresh["frames_reused"] == 0
    assert np.abs(warm["actions_normalized"] - fresh["actions_normalized"]).max() <= 1e-6
    changed = {n: f.copy() for n, f in mixed.items()}
    changed["front"][0, 0, 0] ^= 1  # one byte differs: not the same frame
    _, again = tiny.predict(changed, other_state, task, noise=torch.from_numpy(other_noise), session=session)
    assert again["frames_reused"] == 1  # the wrist frame is still the kept one


def test_changed_token_reuse_at_threshold_zero_is_the_full_encode(tiny, cases):
    meta, arrays = cases
    images, state, task, _ = _inputs(tiny, meta, arrays, 0)
    first = tiny.prepare_inputs(images, state, task)["pixels"][0]
    second = first.clone()
    second[..., 40:72, 40:72] += 0.3  # a moved object: a few patches change
    tower = siglip_tower(tiny.model.vlm_with_expert.vlm.model.vision_model)
    with torch.inference_mode():
        exact = ChangedTokenEncoder(tower, threshold=0.0, refresh=100, sparse_queries=False)
        assert torch.allclose(exact.encode(first), tiny.model.vision_hidden(first), atol=1e-5)
        reused = exact.encode(second)
        assert not exact.last.full and exact.last.recomputed_fraction < 1.0
        assert (reused - tiny.model.vision_hidden(second)).abs().max() <= 1e-5
        # above zero: fewer tokens, a small measured error, and the refresh period forces a full encode
        loose = ChangedTokenEncoder(tower, threshold=0.2, refresh=2)
        loose.encode(first)
        approx = loose.encode(second)
        assert loose.last.recomputed_fraction < exact.last.recomputed_fraction
        error = (approx - tiny.model.vision_hidden(second)).abs().max()
        assert 0 < error < 0.5 * tiny.model.vision_hidden(second).abs().max()
        loose.encode(second)
        assert loose.last.full


def test_a_gate_recomputes_the_moved_tokens_in_whole_buckets_and_the_nearest_to_moving():
    from dysta_ros.policy.vision_reuse import ROW_BUCKETS, _Gate

    tokens = 4 * ROW_BUCKETS  # a bucket of 4 rows
    weight = torch.randn(8, 6)
    gate = _Gate(lambda x: x @ weight.T)
    x = torch.randn(tokens, 6)
    gate.full(x)
    moved = x.clone()
    moved[[3, 17, 40]] *= 1.5  # three tokens move by half their norm
    moved[9] *= 1.02  # one barely: the nearest to moving, so it fills the bucket
    counts = [0, 0]
    out = gate(moved, 0.1, counts)
    assert gate.fired.tolist() == [3, 9, 17, 40] and counts == [4, tokens]
    assert torch.equal(out[gate.fired], moved[gate.fired] @ weight.T)  # recomputed from the new rows
    kept = torch.ones(tokens, dtype=torch.bool)
    kept[gate.fired] = False
    assert torch.equal(out[kept], x[kept] @ weight.T)  # the rest keep their stored output
    assert gate(moved, 0.1, counts) is gate.output and gate.fired.numel() == 0  # nothing moved since


def test_the_tower_embeds_patches_row_major(tiny):
    """Token rows contiguous: the transposed patch grid made every later pass of reuse strided (1.5x)."""
    vision = tiny.model.vlm_with_expert.vlm.model.vision_model
    size = vision.embeddings.image_size
    with torch.inference_mode():
        tokens = siglip_tower(vision).embed(torch.rand(1, 3, size, size))
    assert tokens.is_contiguous() and tokens.shape[1] == vision.embeddings.num_patches


def test_vision_reuse_option_moves_actions_little_and_counts_its_work(tiny, cases):
    meta, arrays = cases
    images, state, task, noise = _inputs(tiny, meta, arrays, 0)
    options = SpeedOptions(vision_reuse=True, vision_threshold=0.05, frame_cache=False)
    session = SmolVLASession()
    tiny.predict(images, state, task, noise=torch.from_numpy(noise), options=options, session=session)
    moved = {n: f.copy() for n, f in images.items()}
    moved["front"][20:40, 20:40] = 255 - moved["front"][20:40, 20:40]
    _, approx = tiny.predict(moved, state, task, noise=torch.from_numpy(noise), options=options,
                             session=session)
    _, exact = tiny.predict(moved, state, task, noise=torch.from_numpy(noise))
    assert approx["vision_recomputed"] < 1.0
    assert np.abs(approx["actions_normalized"] - exact["actions_normalized"]).max() < 0.1


def test_fewer_steps_follow_the_euler_schedule(tiny, cases):
    meta, arrays = cases
    images, state, task, noise = _inputs(tiny, meta, arrays, 0)
    inputs = tiny.prepare_inputs(images, state, task)
    with torch.inference_mode():
        _, tokens = tiny.encode_images(inputs["pixels"])
        embs, pad, flags = tiny.embed_prefix(tokens, inputs)
        _, context = tiny.prefix_forward(embs, pad, flags)
        record = {}
        x5 = tiny.denoise(context, pad, torch.from_numpy(noise), record, steps=5)
        x10 = tiny.denoise(context, pad, torch.from_numpy(noise))
    assert torch.stack(record["timesteps"])[:, 0].tolist() == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    rebuilt = torch.from_numpy(noise) - 0.2 * torch.stack(record["v_t"]).sum(0)
    assert torch.allclose(rebuilt, x5, atol=1e-5)
    assert 0 < (x5 - x10).abs().max() < (x10 - torch.from_numpy(noise)).abs().max()


def test_warm_start_re_noises_the_shifted_tail():
    previous = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 2)
    noise = torch.ones(1, 5, 2)
    x = warm_start_noise(previous, noise, 0.25, shift=2)
    assert x[0, :, 0].tolist() == pytest.approx([0.25 + 0.75 * v for v in (2, 3, 4, 4, 4)])
    assert torch.equal(warm_start_noise(previous, noise, 1.0, shift=1), noise)


def test_warm_start_option_uses_the_previous_chunk(tiny, cases):
    meta, arrays = cases
    images, state, task, noise = _inputs(tiny, meta, arrays, 0)
    session, options = SmolVLASession(), SpeedOptions(warm_start=True, warm_start_time=0.5)
    _, first = tiny.predict(images, state, task, noise=torch.from_numpy(noise), options=options,
                            session=session)
    _, cold = tiny.predict(images, state, task, noise=torch.from_numpy(noise))
    assert np.array_equal(first["actions_normalized"], cold["actions_normalized"])  # nothing to start from
    _, second = tiny.predict(images, state, task, noise=torch.from_numpy(noise), options=options,
                             session=session)
    assert not np.array_equal(second["actions_normalized"], cold["actions_normalized"])


def test_bf16_copy_is_made_once_and_stays_close(tiny, cases):
    meta, arrays = cases
    images, state, task, noise = _inputs(tiny, meta, arrays, 0)
    half = tiny.in_dtype(torch.bfloat16)
    assert half is tiny.in_dtype(torch.bfloat16) and tiny.in_dtype(torch.float32) is tiny
    assert half.dtype == torch.bfloat16 and tiny.dtype == torch.float32
    _, low = half.predict(images, state, task, noise=torch.from_numpy(noise))
    _, ref = tiny.predict(images, state, task, noise=torch.from_numpy(noise))
    assert 0 < np.abs(low["actions_normalized"] - ref["actions_normalized"]).max() < 0.1


def test_speed_options_are_validated_and_split_from_strategy_keys():
    options, rest = split_speed_options({"history": 2, "denoise_steps": 5, "vision_reuse": True})
    assert rest == {"history": 2} and options.denoise_steps == 5 and not options.exact
    assert SpeedOptions().exact and SpeedOptions(drop_pads=False).exact
    with pytest.raises(ConfigError, match="denoise_steps"):
        SpeedOptions(denoise_steps=-1)
    with pytest.raises(ConfigError, match="unknown key"):
        SpeedOptions.from_dict({"vision_reus": True})
    for key, value in (("vision_refresh", True), ("denoise_steps", 2.5), ("vision_reuse", "yes"),
                       ("compute_dtype", 16)):  # each once passed as something else
        with pytest.raises(ConfigError, match=f"{key} must be of type"):
            SpeedOptions.from_dict({key: value})
    assert SpeedOptions(vision_threshold=0).vision_threshold == 0  # an int where a float is: fine


def test_cuda_graphs_are_refused_on_a_cpu_policy(tiny):
    from dysta_ros.policy.runtime import runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend

    with pytest.raises(ConfigError, match="cuda_graphs needs a CUDA device"):
        runtime_around(SmolVLABackend(tiny), "full", {"cuda_graphs": True})
    with pytest.raises(ConfigError, match="cuda_graphs needs a CUDA device"):
        tiny.graphed_denoiser()


def test_changed_token_reuse_runs_on_the_own_vla_vision_tower_too():
    from dysta_ros.evaluation.bench import synthetic_observations
    from dysta_ros.policy.runtime import build_model, runtime_around

    model, tokenizer = build_model("tiny")
    size = model.cfg.vision.image_size
    pixels = torch.randn(1, 3, size, size)
    moved = pixels.clone()
    moved[..., :8, :8] += 1.0
    with torch.inference_mode():
        exact = ChangedTokenEncoder(siglip_tower(model.vision), 0.0, 100, sparse_queries=False)
        exact.encode(pixels)
        assert (exact.encode(moved) - model.vision(pixel_values=moved).last_hidden_state).abs().max() <= 1e-5
        assert exact.last.recomputed_fraction < 1.0
    observations = synthetic_observations(3, model.cfg.camera_names, model.cfg.state_dim, size=(size, size))
    reuse = runtime_around(model, "full", {"vision_reuse": True}, tokenizer=tokenizer)
    full = runtime_around(model, "full", {}, tokenizer=tokenizer)
    for obs in observations:
        (approx, stats), (ref, _) = reuse.step(obs), full.step(obs)
    assert stats.vision_recomputed < 1.0
    assert np.abs(approx.actions - ref.actions).max() < 0.1 * np.abs(ref.actions).max()
    with pytest.raises(ConfigError, match="SmolVLA models only"):
        runtime_around(model, "full", {"denoise_steps": 5}, tokenizer=tokenizer)


def test_the_runtime_reads_the_speed_options_for_smolvla(tiny, cases):
    from dysta_ros.policy.runtime import runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend
    from dysta_ros.types import Observation

    meta, arrays = cases
    images, state, task, _ = _inputs(tiny, meta, arrays, 0)
    obs = Observation(stamp=0.0, images=images, state=state, instruction=task)
    backend = SmolVLABackend(tiny)
    cached = runtime_around(backend, "full", {})
    plain = runtime_around(backend, "full", {"frame_cache": False})
    plain_chunks = []
    for _ in range(2):
        (a, stats), (b, _) = cached.step(obs), plain.step(obs)
        plain_chunks.append(b.actions)
    scale = np.abs(b.actions).max()
    assert stats.vision_recomputed == 0.0 and np.abs(a.actions - b.actions).max() <= 1e-5 * scale
    warm = runtime_around(backend, "full", {"warm_start": True, "warm_start_time": 0.5})
    first, _ = warm.step(obs)
    second, _ = warm.step(obs)
    assert np.abs(first.actions - plain_chunks[0]).max() <= 1e-5 * scale  # nothing to start from yet
    assert not np.allclose(second.actions, plain_chunks[1], atol=1e-3 * scale)
    half = runtime_around(backend, "full", {"compute_dtype": "bfloat16"})
    assert half.model.dtype == torch.bfloat16 and backend.dtype == torch.float32
    low, _ = half.step(obs)
    assert 0 < np.abs(low.actions - plain_chunks[0]).max() < 0.1 * scale
    # auto: bf16 only where the CPU has bf16 matrix units, else the loaded fp32 weights
    auto = runtime_around(backend, "full", {"compute_dtype": "auto"})
    native = native_bfloat16(torch.device("cpu"))
    assert auto.model.dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("camera_threads", [True, False])
def test_cameras_side_by_side_or_batched_give_lerobots_actions(tiny, cases, camera_threads):
    # two threads, so the two cameras really are encoded side by side (one thread each)
    meta, arrays = cases
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for index in range(2):
            images, state, task, noise = _inputs(tiny, meta, arrays, index)
            options = SpeedOptions(camera_threads=camera_threads, frame_cache=False)
            _, info = tiny.predict(images, state, task, noise=torch.from_numpy(noise), options=options)
            reference = arrays[f"case{index}.actions_normalized"][0]
            assert np.abs(info["actions_normalized"] - reference).max() <= 1e-5
    finally:
        torch.set_num_threads(before)


def test_a_bf16_checkpoint_run_as_its_fp32_upcast_says_how_to_run_it_as_lerobot_does(tiny, caplog):
    from dysta_ros.policy.runtime import runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend

    stored_bf16 = SmolVLABackend(load_smolvla(DATA / "smolvla_tiny_bf16" / "checkpoint",
                                              DATA / "smolvla_tiny_bf16" / "vlm"))
    assert stored_bf16.stored_in_bfloat16 and stored_bf16.dtype == torch.float32  # upcast on load
    assert not SmolVLABackend(tiny).stored_in_bfloat16
    hint = "compute_dtype: auto computes in bf16"
    with caplog.at_level("INFO", logger="dysta_ros.policy.runtime"):
        runtime_around(stored_bf16, "full", {})
        said = hint in caplog.text
        caplog.clear()
        runtime_around(stored_bf16, "full", {"compute_dtype": "auto"})  # already asked for
        runtime_around(SmolVLABackend(tiny), "full", {})  # an fp32 checkpoint: nothing to say
    assert said == native_bfloat16(torch.device("cpu")) and hint not in caplog.text


def test_warm_up_leaves_no_vision_reuse_or_frame_cache_behind(tiny, cases):
    from dysta_ros.policy.runtime import runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend
    from dysta_ros.types import Observation

    meta, arrays = cases
    options = {"vision_reuse": True, "compute_dtype": "auto"}
    warmed, fresh = (runtime_around(SmolVLABackend(tiny), "full", options) for _ in range(2))
    warmed.warm_up(meta["cases"][0]["task"])
    assert not warmed.vision_encoders and not warmed.kept_frames and warmed.previous_chunk is None
    for index in range(2):
        images, state, task, _ = _inputs(tiny, meta, arrays, index)
        obs = Observation(0.5, images, state, task)
        assert np.array_equal(warmed.step(obs)[0].actions, fresh.step(obs)[0].actions)


def test_a_refused_chunk_is_not_where_warm_start_goes_on_from(tiny, cases):
    """A chunk dropped as non-finite was never executed: the next step warm-starts from the last good one."""
    from dysta_ros.errors import InferenceError
    from dysta_ros.policy.runtime import runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend
    from dysta_ros.types import Observation

    meta, arrays = cases
    observations = []
    for index in range(2):
        images, state, task, _ = _inputs(tiny, meta, arrays, index)
        observations.append(Observation(0.5, images, state, task))
    options = {"warm_start": True, "warm_start_time": 0.5}
    faulty, clean = (runtime_around(SmolVLABackend(tiny), "full", options) for _ in range(2))
    for runtime in (faulty, clean):
        runtime.step(observations[0])
    bias = tiny.model.action_out_proj.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[0] = float("nan")  # a transient fault: this one chunk comes out non-finite
    try:
        with pytest.raises(InferenceError, match="non-finite"):
            faulty.step(observations[1])
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    ours, theirs = faulty.step(observations[1])[0], clean.step(observations[1])[0]
    assert ours.sequence == theirs.sequence == 1
    assert np.array_equal(ours.actions, theirs.actions)


def test_a_compute_dtype_copy_asked_for_another_dtype_gives_the_loaded_weights(tiny, cases):
    """A runtime built around another runtime's bf16 model, asking float32, is the loaded fp32 one."""
    from dysta_ros.policy.runtime import runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend
    from dysta_ros.types import Observation

    half = tiny.in_dtype(torch.bfloat16)
    assert half.in_dtype(torch.float32) is tiny and half.in_dtype(torch.bfloat16) is half
    meta, arrays = cases
    images, state, task, _ = _inputs(tiny, meta, arrays, 0)
    obs = Observation(0.0, images, state, task)
    bf16 = runtime_around(SmolVLABackend(tiny), "full", {"compute_dtype": "bfloat16"})
    again = runtime_around(bf16.model, "full", {"compute_dtype": "float32"})
    plain = runtime_around(SmolVLABackend(tiny), "full", {})
    assert np.array_equal(again.step(obs)[0].actions, plain.step(obs)[0].actions)


def test_camera_threads_are_cpu_threads_and_a_gpu_encodes_the_cameras_in_one_batch(tiny, cases, monkeypatch):
    from dysta_ros.policy import runtime as runtime_module
    from dysta_ros.policy.runtime import camera_encoding, runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend
    from dysta_ros.types import Observation

    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert camera_encoding(cpu, SpeedOptions(), 2) == "threads"
    assert camera_encoding(cpu, SpeedOptions(camera_threads=False), 2) == "each"
    assert camera_encoding(gpu, SpeedOptions(), 2) == "batch"  # no CPU-thread workers on a GPU
    assert camera_encoding(gpu, SpeedOptions(vision_reuse=True), 2) == "each"
    assert camera_encoding(gpu, SpeedOptions(), 1) == camera_encoding(cpu, SpeedOptions(), 1) == "each"
    # the batch a GPU runs gives the same actions as the threads, here on the CPU
    meta, arrays = cases
    images, state, task, _ = _inputs(tiny, meta, arrays, 0)
    obs = Observation(stamp=0.0, images=images, state=state, instruction=task)
    backend = SmolVLABackend(tiny)
    assert len(backend.spec.camera_names) >= 2
    threaded, _ = runtime_around(backend, "full", {}).step(obs)
    monkeypatch.setattr(runtime_module, "camera_encoding", lambda device, options, cameras: "batch")
    batched, _ = runtime_around(backend, "full", {}).step(obs)
    assert np.abs(batched.actions - threaded.actions).max() <= 1e-5 * np.abs(threaded.actions).max()


def test_the_full_prefix_pass_waits_for_the_device_twice_not_once_per_layer(tiny, cases):
    # every int()/bool() of a device tensor drains a GPU's queue: counted by what reaches the host
    from torch.utils._python_dispatch import TorchDispatchMode

    from dysta_ros.policy.runtime import runtime_around
    from dysta_ros.policy.smolvla.backend import SmolVLABackend
    from dysta_ros.types import Observation

    aten = torch.ops.aten
    reads = {aten.item.default, aten.is_nonzero.default, aten._local_scalar_dense.default}

    class HostReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            HostReads.count += func in reads
            return func(*args, **(kwargs or {}))

    meta, arrays = cases
    images, state, task, _ = _inputs(tiny, meta, arrays, 0)
    runtime = runtime_around(SmolVLABackend(tiny), "full", {})
    runtime.step(Observation(stamp=0.0, images=images, state=state, instruction=task))  # caches made
    original = runtime.model.run_backbone

    def counted(embeds, positions, plan):
        with HostReads():
            return original(embeds, positions, plan)

    runtime.model.run_backbone = counted
    _, stats = runtime.step(Observation(stamp=0.1, images=images, state=state, instruction=task))
    assert tiny.cfg.num_vlm_layers > 2 and HostReads.count == 2
    assert stats.flops_ratio == pytest.approx(1.0)  # the pairs are still every layer's


def test_the_loop_cuda_graphs_capture_reads_nothing_back_and_makes_nothing_on_the_cpu(tiny):
    # What graphs.py captures (SmolVLAModel.denoise after the side-stream warm-up has cached the
    # schedule's time embeddings) must not read a device tensor on the host (illegal in capture)
    # nor make a tensor on the CPU (a device mismatch on CUDA): run on the meta device, watched.
    import copy

    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    reads = {aten.item.default, aten.is_nonzero.default, aten._local_scalar_dense.default}
    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                       if isinstance(t, torch.Tensor)]
            if func in reads or any(t.device.type != "meta" and t.dim() > 0 for t in tensors):
                seen.append(str(func))
            return out

    model = copy.deepcopy(tiny.model).to("meta")
    model._time_cache = {}
    cfg, text = tiny.cfg, tiny.files.vlm.text
    prefix = 7
    kv = [(torch.empty(1, prefix, text.num_key_value_heads, text.head_dim, device="meta"),) * 2
          for _ in range(cfg.num_vlm_layers)]
    pad = torch.ones(1, prefix, dtype=torch.bool, device="meta")
    noise = torch.empty(1, cfg.chunk_size, cfg.max_action_dim, device="meta")
    with torch.inference_mode():
        context = model.expert_context(kv, pad)
        for steps, start in ((0, 1.0), (5, 1.0), (3, 0.5)):
            model.denoise(context, pad, noise, steps=steps, start_time=start)  # the warm-up
            with Watch():
                x0 = model.denoise(context, pad, noise, steps=steps, start_time=start)  # the capture
            assert x0.shape == noise.shape and x0.device.type == "meta"
    assert seen == []
