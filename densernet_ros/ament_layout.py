"""The files by which ROS 2 finds the package under an install prefix: the ament index marker and
share/densernet_ros (package.xml, launch, config, rviz) that `ros2 launch` and ament_index_python read,
and lib/densernet_ros/<executable>, the only place launch_ros runs a node from.

One list serves setup.py (data_files: colcon, `pip install .` into a venv or with --user) and
`densernet-ros-layout`, which writes the same files for installs pip leaves them out of: an editable
install (`pip install -e .`: PEP 660 editable wheels carry no data files). The lib/ launchers hand
over to the console scripts pip puts in <prefix>/bin (scripts/lib/); a colcon build installs the
console scripts into lib/densernet_ros itself (setup.cfg), so setup.py leaves them out there.
This module imports nothing from ROS: setup.py loads it before anything is installed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from glob import glob
from pathlib import Path

PACKAGE = "densernet_ros"
LAUNCHERS = "scripts/lib"


def data_files(root: str | Path = ".", launchers: bool = True) -> list[tuple[str, list[str]]]:
    """(install directory relative to the prefix, files relative to `root`) pairs, as setup.py wants them."""
    root = Path(root)

    def files(pattern: str) -> list[str]:
        return sorted(str(Path(p).relative_to(root)) for p in glob(str(root / pattern)))

    out = [("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
           (f"share/{PACKAGE}", ["package.xml"]),
           (f"share/{PACKAGE}/launch", files("launch/*.launch.py")),
           (f"share/{PACKAGE}/config", files("config/*.yaml")),
           (f"share/{PACKAGE}/rviz", files("rviz/*.rviz"))]
    if launchers:
        out.append((f"lib/{PACKAGE}", files(f"{LAUNCHERS}/*")))
    return out


def install(prefix: str | Path, root: str | Path) -> list[Path]:
    """Copy the layout from a source tree `root` into `prefix` (executables stay executable)."""
    prefix, root = Path(prefix), Path(root)
    written = []
    for folder, names in data_files(root):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            dest = prefix / folder / Path(name).name
            shutil.copy2(root / name, dest)
            written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    """`densernet-ros-layout`: after `pip install -e .`, so `ros2 launch densernet_ros ...` finds the package."""
    p = argparse.ArgumentParser(prog="densernet-ros-layout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", default=sys.prefix, help="install prefix (default: this interpreter's, %(default)s)")
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[1]),
                   help="the source tree holding package.xml (default: the one this module runs from)")
    args = p.parse_args(argv)
    if not (Path(args.source) / "package.xml").is_file():
        print(f"densernet-ros-layout: no package.xml in {args.source}: give --source, the repository root",
              file=sys.stderr)
        return 1
    for path in install(args.prefix, args.source):
        print(path)
    print(f"AMENT_PREFIX_PATH must include {args.prefix}"
          + ("" if args.prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) else " (it does not now)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
