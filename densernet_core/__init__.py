"""densernet_core: DenserNet visual place recognition and localization, without ROS."""
import logging

__version__ = "0.1.0"
LOG = logging.getLogger("densernet")
