"""Install the dysta_ros Python package (the messages are built by CMakeLists.txt)."""

from setuptools import find_packages, setup

ENTRY_POINTS = {
    "console_scripts": [
        "dysta-ros = dysta_ros.cli:main",
        "policy_node = dysta_ros.nodes.policy_node:main",
        "chunk_executor = dysta_ros.nodes.chunk_executor:main",
        "sim_node = dysta_ros.nodes.sim_node:main",
        "bag_player = dysta_ros.nodes.bag_player:main",
        "robot_link = dysta_ros.nodes.robot_link:main",
    ]
}

setup(
    name="dysta_ros",
    version="0.1.0",
    description="Fast multi-frame VLA policies for ROS 2 (DySta, GoToHunt, VLA-Cache)",
    license="Apache-2.0",
    packages=find_packages(include=["dysta_ros", "dysta_ros.*"]),
    package_data={"dysta_ros.policy.smolvla": ["smolvla_base.json"]},  # the real-size geometry
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "pyyaml",
        "torch",
        "transformers>=5,<6",
        "safetensors",
        "tokenizers",
        "tqdm",
        "matplotlib",
        "opencv-python-headless",
        "mujoco>=3",
        "rosbags>=0.10",
        "mcap>=1.2",  # reads the complete messages of MCAP files a killed recorder left
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis", "ruff"],
        "fleet": ["ray==2.58.0"],  # `dysta-ros eval --ray`: bags x checkpoints as Ray tasks
        # `dysta-ros convert` (LeRobot datasets <-> bags): parquet and mp4 (AV1/h264) video;
        # floors as LeRobot's own (it pins av<16), tested with pyarrow 25.0.1 and av 18.1.0
        "lerobot": ["pyarrow>=21", "av>=15"],
    },
    zip_safe=False,
    entry_points=ENTRY_POINTS,
)
