"""The ROS 2 shell: rclpy nodes, message conversions, QoS; the only package that imports ROS.

Every process that runs these nodes imports this package first, so the GIL setting below
covers them all. Inference, physics and rendering are many short C calls, each releasing and
re-taking the GIL; at Python's default 5 ms switch interval, any busy thread in the process
(executor callbacks, a sim sharing it) makes every re-take wait its turn. Measured in the demo
(sim, expert, policy and executor in one process): sim and policy steps 10-40x slower, a 6 s
episode taking 50 s of wall time. 0.5 ms keeps each thread close to its own speed.
"""

import sys

GIL_SWITCH_INTERVAL_S = 0.0005
sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
