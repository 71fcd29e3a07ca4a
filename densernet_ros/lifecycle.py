"""The managed (lifecycle) localizer, for nav2's lifecycle_manager (or `ros2 lifecycle set`).

unconfigured --configure--> inactive: the model and the map are loaded, publishers and the reset
service made; --activate--> active: subscriptions, the worker and the timers run, the lifecycle
publishers publish; --deactivate--> inactive: all of that stops, nothing is published; --cleanup-->
unconfigured: the model and the map are released. `autostart: true` configures and activates at
start-up, as a lifecycle_manager with autostart would. Same parameters as the plain node
(config/localize.yaml), same work (node.LocalizerCore).

    ros2 launch densernet_ros localize.launch.py managed:=true map_dir:=/abs/map
    localize_lifecycle_node --map-dir MAP --ros-args -p autostart:=true
"""
from __future__ import annotations

import sys
from typing import Sequence

from rclpy.lifecycle import LifecycleState, Node as LifecycleNode, TransitionCallbackReturn

from densernet_core.config import ConfigError

from .node import NODE_NAME, LocalizerCore, run

START_UP_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError)


class ManagedLocalizerNode(LocalizerCore, LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings = self._declare_parameters()
        self._configured = self._active = False

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
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate()
        self._active = False
        return super().on_deactivate(state)

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
