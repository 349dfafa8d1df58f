"""The ROS 2 shell: rclpy nodes, message conversions, QoS; the only package that imports ROS."""
