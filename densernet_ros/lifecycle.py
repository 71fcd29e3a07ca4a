"""The managed (lifecycle) localizer, for nav2's lifecycle_manager (or `ros2 lifecycle set`).

unconfigured --configure--> inactive: the model and the map are loaded, publishers and the reset
service made; --activate--> active: subscriptions, the worker and the timers run, the lifecycle
publishers publish; --deactivate--> inactive: all of that stops, nothing is published; --cleanup-->
unconfigured: the model and the map are released. `autostart: true` configures and activates at
start-up, as a lifecycle_manager with autostart would. Same parameters as the plain node
(config/localize.yaml), same work (node.LocalizerCore).

Once active, the node keeps a bond with nav2's lifecycle_manager, as nav2's own nodes do
(nav2_util::LifecycleNode): heartbeats on `bond` under the node's name, every `bond_heartbeat_period`
(0.1 s), through bondpy where it imports (a ROS 2 install). After activating a node, the manager waits
bond_timeout (4 s) for its bond and aborts the whole bring-up without one; without bondpy, give that manager
`bond_timeout: 0.0`.

    ros2 launch densernet_ros localize.launch.py managed:=true map_dir:=/abs/map
    localize_lifecycle_node --map-dir MAP --ros-args -p autostart:=true
"""
from __future__ import annotations

import inspect
import sys
from typing import Sequence

from rclpy.lifecycle import LifecycleState, Node as LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node

from densernet_core.config import ConfigError

from .node import NODE_NAME, LocalizerCore, run

START_UP_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError)
BOND_TOPIC = "bond"  # where nav2's lifecycle_manager bonds with each node it manages, by the node's name
BOND_HEARTBEAT_TIMEOUT_S = 4.0  # nav2_util::LifecycleNode's: the manager's silence that breaks the bond


def start_bond(node: Node, period_s: float):
    """The bond a lifecycle manager watches for this node (a started bondpy Bond), or None: the period is 0,
    or bondpy cannot be imported (the log says what a nav2 lifecycle_manager needs then)."""
    if period_s <= 0:
        node.get_logger().info("bond_heartbeat_period is 0: no bond with a lifecycle manager")
        return None
    try:
        from bondpy.bondpy import Bond
    except ImportError as exc:
        node.get_logger().info(f"no bond with a lifecycle manager: bondpy cannot be imported ({exc}); a nav2 "
                               "lifecycle_manager aborts its bring-up without one unless its bond_timeout is 0.0 "
                               "(or install it: apt install ros-$ROS_DISTRO-bondpy)")
        return None
    # bondpy's constructor changed between releases: (topic, id, node), (node, topic, id), (node, topic, bond_id)
    id_name = "bond_id" if "bond_id" in inspect.signature(Bond).parameters else "id"
    bond = Bond(node=node, topic=BOND_TOPIC, **{id_name: node.get_name()})
    bond.heartbeat_period = period_s
    bond.heartbeat_timeout = BOND_HEARTBEAT_TIMEOUT_S
    bond.start()
    node.get_logger().info(f"bond {node.get_name()!r} on {BOND_TOPIC}: heartbeat every {period_s:g} s")
    return bond


class ManagedLocalizerNode(LocalizerCore, LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings = self._declare_parameters()
        self._configured = self._active = False
        self._bond = None

    def _publisher(self, msg_type, topic: str, qos):
        return self.create_lifecycle_publisher(msg_type, topic, qos)  # publishes only while active

    def _destroy_publisher(self, pub) -> None:
        self.destroy_lifecycle_publisher(pub)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.configure()
        except START_UP_ERRORS as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.activate()
        self._active = True
        self._bond = start_bond(self, self.settings.bond_heartbeat_period)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._break_bond()
        self.deactivate()
        self._active = False
        return super().on_deactivate(state)

    def _break_bond(self) -> None:
        """Tell the manager the node is going (as nav2's nodes do on deactivate), so it is not taken for dead.
        After SIGINT/SIGTERM the context is already shut down and nothing can be published: the heartbeats
        just stop (bondpy's thread ends on its `is_shutdown`), as for any node the signal takes down."""
        bond, self._bond = self._bond, None
        if bond is None:
            return
        if self.context.ok():
            bond.shutdown()
            # bondpy destroys its publisher and subscription itself, leaving them in the node's lists: the
            # executor's next wait set met their destroyed handles and the node died (InvalidHandle), seen with
            # the real bondpy. The node's own bookkeeping lets them go (their handles are already released).
            self.destroy_subscription(bond.sub)
            self.destroy_publisher(bond.pub)
        else:
            bond.is_shutdown = True

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.cleanup()
        self._configured = False
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shutdown()
        return TransitionCallbackReturn.SUCCESS

    def shutdown(self) -> None:
        """Whatever state it is in: stop and release (SIGINT, or the shutdown transition)."""
        if self._active:
            self._break_bond()
            self.deactivate()
            self._active = False
        if self._configured:
            self.cleanup()
            self._configured = False


def _make() -> ManagedLocalizerNode:
    node = ManagedLocalizerNode()
    if node.settings.autostart:
        node.trigger_configure()
        if not node._configured:
            node.destroy_node()
            raise RuntimeError("autostart: configure failed (see the error above)")
        node.trigger_activate()
    return node


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: `localize_lifecycle_node [--params-file F] [--map-dir M] [--ros-args ...]`."""
    return run(_make, argv, "localize_lifecycle_node", "DenserNet localizer, managed (lifecycle) node")


if __name__ == "__main__":
    sys.exit(main())
