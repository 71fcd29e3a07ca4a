"""From a camera frame to a pose: retrieval, pose estimation, odometry."""
