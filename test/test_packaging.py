"""The ROS-workspace path stays honest: colcon builds the package and installs share/ files."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "build", "install", "log", "demo_out", "runs", "__pycache__", ".pytest_cache"}


def test_colcon_build_installs_share_files(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        colcon = shutil.which("colcon")
    if not colcon:
        pytest.skip("colcon not installed (pip install colcon-common-extensions)")
    src = tmp_path / "ws" / "src" / "densernet_ros"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    ws = tmp_path / "ws"
    result = subprocess.run([str(colcon), "build", "--event-handlers", "console_cohesion-"], cwd=ws,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    share = ws / "install" / "densernet_ros" / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "densernet_ros").is_file()
    assert (share / "densernet_ros" / "package.xml").is_file()
    assert (share / "densernet_ros" / "launch" / "localize.launch.py").is_file()
    assert (share / "densernet_ros" / "config" / "localize.yaml").is_file()
    # launch_ros looks for executables in lib/<package>.
    assert (ws / "install" / "densernet_ros" / "lib" / "densernet_ros" / "localize_node").is_file()


def test_package_xml_declares_ament_python_and_ros_deps():
    import xml.etree.ElementTree as ET

    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "nav_msgs", "diagnostic_msgs"} <= deps


# setup.py's requirement -> its rosdep key in package.xml (keys checked against rosdistro's rosdep/python.yaml).
ROSDEP_KEYS = {"numpy": "python3-numpy", "opencv-python-headless": "python3-opencv", "pyyaml": "python3-yaml",
               "scipy": "python3-scipy", "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib",
               "scikit-image": "python3-skimage", "faiss-cpu": "python3-faiss", "torch": "python3-pytorch-pip",
               "torchvision": "python3-torchvision-pip", "rosbags": "python3-rosbags-pip"}


def test_every_requirement_reaches_a_ros_workspace_user():
    """A colcon build installs no Python requirement: each one of setup.py must be in package.xml (for
    rosdep) or in the README's pip line for ROS workspaces. threadpoolctl was nearly added to setup.py only."""
    import ast
    import re
    import xml.etree.ElementTree as ET

    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = next(k.value for k in call.keywords if k.arg == "install_requires")
    names = {re.split(r"[<>=!\[ ]", ast.literal_eval(e))[0].lower() for e in requires.elts} - {"setuptools"}
    deps = {e.text for e in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend")}
    readme = (ROOT / "README.md").read_text()
    pip_line = next(line for line in readme.splitlines() if line.startswith("pip install torch=="))
    pip_names = {re.split(r"[<>=!]", w)[0].lower() for w in pip_line.split()[2:]}
    missing = sorted(n for n in names if ROSDEP_KEYS.get(n) not in deps and n not in pip_names)
    assert not missing, f"requirements a ROS workspace user is never told to install: {missing}"


def test_venv_install_registers_package_in_ament_index():
    """`pip install .` into the venv (the test command does it) puts share/ under the venv prefix."""
    prefix = Path(sys.prefix)
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "densernet_ros"
    if not marker.is_file():
        pytest.skip(f"package not pip-installed into {prefix} (run through `make test`)")
    assert (prefix / "share" / "densernet_ros" / "config" / "localize.yaml").is_file()
    assert (prefix / "share" / "densernet_ros" / "launch" / "localize.launch.py").is_file()


def test_core_library_never_imports_ros():
    """densernet_core must run without ROS: no rclpy or ROS message package anywhere in it."""
    import ast

    ros = {"rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "nav_msgs", "diagnostic_msgs", "tf2_ros",
           "cv_bridge", "launch", "launch_ros", "densernet_ros"}
    offenders = []
    for path in sorted((ROOT / "densernet_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in ros]
    assert not offenders, offenders
