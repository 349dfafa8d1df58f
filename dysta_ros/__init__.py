"""dysta_ros: a fast multi-frame VLA policy for ROS 2 robots."""

# The generated message modules (dysta_ros.msg) are installed by CMake into the interpreter's
# site-packages, beside this source tree rather than inside it; let them join this package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
