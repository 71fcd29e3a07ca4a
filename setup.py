"""densernet_ros: one ament_python package holding the ROS-free core and the ROS 2 node.

`colcon build` and a plain `pip install .` into a venv both install the ament index marker,
package.xml, the launch file and the config under share/, so `ros2 launch` and
`ament_index_python` find the package either way.
"""
import runpy
import sys

from setuptools import find_packages, setup

PACKAGE = "densernet_ros"
# share/ and lib/ files ROS finds the package by (densernet_ros/ament_layout.py, shared with the
# densernet-ros-layout command for editable installs). colcon runs `setup.py install`/`develop`, which
# put the console scripts into lib/densernet_ros themselves (setup.cfg): no launchers there.
LAYOUT = runpy.run_path("densernet_ros/ament_layout.py")
COLCON_STYLE = any(cmd in sys.argv for cmd in ("install", "develop"))

setup(
    name=PACKAGE,
    version="0.1.0",
    description="DenserNet visual place recognition and localization for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["densernet_core", "densernet_core.*", "densernet_ros", "densernet_ros.*"]),
    data_files=LAYOUT["data_files"](launchers=not COLCON_STYLE),
    install_requires=[
        "setuptools",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "faiss-cpu>=1.8",
        "opencv-python-headless>=4.8",
        "numpy>=1.24",
        "pyyaml>=6",
        "scipy>=1.10",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "onnx>=1.15",
        "safetensors>=0.4",
        "rosbags>=0.10",
        "rosbags-image>=0.9",
        "scikit-image>=0.22",
        "threadpoolctl>=3.1",
    ],
    extras_require={
        # ROS 2 (Kilted) from PyPI wheels, for machines without a system ROS 2 install.
        "ros": ["ros-rclpy", "ros-sensor-msgs", "ros-geometry-msgs", "ros-std-msgs", "ros-nav-msgs",
                "ros-diagnostic-msgs", "ros-std-srvs", "ros-rmw-fastrtps-cpp", "ros-lifecycle-msgs",
                "ros-visualization-msgs"],
        # Exported runtimes (densernet export; --backend onnxruntime | openvino).
        "deploy": ["onnxruntime>=1.17", "openvino>=2024.0"],
        "dev": ["pytest>=7", "onnxruntime>=1.17", "openvino>=2024.0", "colcon-common-extensions"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "densernet = densernet_core.cli:main",
            "densernet-map = densernet_core.mapping.cli:main",
            "densernet-localize = densernet_core.localization.cli:main",
            "densernet-demo = densernet_ros.demo:main",
            "localize_node = densernet_ros.node:main",
            "localize_lifecycle_node = densernet_ros.lifecycle:main",
            "densernet-node = densernet_ros.node:main",
            "densernet-ros-layout = densernet_ros.ament_layout:main",
        ],
    },
)
