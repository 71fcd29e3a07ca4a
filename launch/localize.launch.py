"""Start the densernet_ros localizer: camera in, place and pose out.

    ros2 launch densernet_ros localize.launch.py map_dir:=/path/to/map image_topic:=/camera/image_raw
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ('params_file', PathJoinSubstitution([FindPackageShare('densernet_ros'), 'config', 'localize.yaml']),
     'YAML file with the node parameters'),
    ('map_dir', '', 'map folder built by densernet-map (overrides params_file when set)'),
    ('checkpoint', '', 'model checkpoint (overrides params_file when set; empty: the map manifest names it)'),
    ('image_topic', 'image', 'camera topic the node subscribes to'),
    ('namespace', '', 'namespace for the node and all its topics'),
    ('use_sim_time', 'false', 'use /clock time (bag replay)'),
    ('log_level', 'info', 'logging level of the node'),
]


def _localizer(context):
    overrides = {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)}
    for name in ('map_dir', 'checkpoint'):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    return [Node(
        package='densernet_ros',
        executable='localize_node',
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
