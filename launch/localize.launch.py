"""Start the densernet_ros localizer: camera in, the robot base's pose out.

    ros2 launch densernet_ros localize.launch.py map_dir:=/path/to/map image_topic:=/camera/image_raw
    ros2 launch densernet_ros localize.launch.py managed:=true autostart:=true map_dir:=...   # lifecycle node
    ros2 launch densernet_ros localize.launch.py managed:=true map_dir:=...   # driven by nav2's lifecycle_manager
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ('params_file', PathJoinSubstitution([FindPackageShare('densernet_ros'), 'config', 'localize.yaml']),
     'YAML file with the node parameters'),
    ('map_dir', '', 'map folder built by densernet-map (overrides params_file when set)'),
    ('checkpoint', '', 'model checkpoint (overrides params_file when set; empty: the map manifest names it)'),
    ('image_topic', 'image', 'camera topic the node subscribes to'),
    ('base_frame', '', 'robot frame whose pose is published (overrides params_file when set; default base_link)'),
    ('namespace', '', 'namespace for the node and all its topics'),
    ('use_sim_time', 'false', 'use /clock time (bag replay)'),
    ('log_level', 'info', 'logging level of the node'),
    ('managed', 'false', 'start the lifecycle (managed) node, for nav2 lifecycle_manager'),
    ('autostart', 'false', 'managed node: configure and activate at start-up'),
]


def _localizer(context):
    overrides = {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool),
                 'autostart': ParameterValue(LaunchConfiguration('autostart'), value_type=bool)}
    for name in ('map_dir', 'checkpoint', 'base_frame'):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    managed = LaunchConfiguration('managed').perform(context).lower() in ('true', '1', 'yes')
    kind, executable = (LifecycleNode, 'localize_lifecycle_node') if managed else (Node, 'localize_node')
    return [kind(
        package='densernet_ros',
        executable=executable,
        name='densernet_localizer',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=[('image', LaunchConfiguration('image_topic')),
                    ('image/compressed', [LaunchConfiguration('image_topic'), '/compressed'])],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
    )]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_localizer)])
