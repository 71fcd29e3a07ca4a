"""What RViz shows (rviz/densernet.rviz): the map's places, latched, and the belief over them per frame.

`place_recognition/map_markers` (transient local: a late RViz still gets it): one sphere list of the
mapped places (at most MAX_PLACE_MARKERS, evenly thinned beyond) and a line along the route.
`place_recognition/belief_markers`: the places holding the belief, coloured and sized by their share,
and a text with the probability of "outside the map".
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

MAX_PLACE_MARKERS = 100000  # RViz draws a sphere list of this size smoothly; larger maps are thinned
MAX_BELIEF_MARKERS = 2000   # the most probable places drawn per frame
PLACE_SIZE = 0.3            # of a place sphere, in place spacings


def map_markers(positions: np.ndarray, frame: str, spacing: float, stamp) -> MarkerArray:
    step = max(1, int(np.ceil(len(positions) / MAX_PLACE_MARKERS)))
    shown = positions[::step]
    places = _marker(0, "places", Marker.SPHERE_LIST, frame, stamp, PLACE_SIZE * spacing, (0.6, 0.6, 0.6, 0.8))
    places.points = [_point(p) for p in shown]
    route = _marker(1, "route", Marker.LINE_STRIP, frame, stamp, 0.1 * PLACE_SIZE * spacing, (0.3, 0.3, 0.8, 0.6))
    route.points = list(places.points)
    return MarkerArray(markers=[places, route])


def belief_markers(positions: np.ndarray, belief: np.ndarray, outside: float, frame: str, spacing: float,
                   stamp) -> MarkerArray:
    top = np.argpartition(-belief, MAX_BELIEF_MARKERS)[:MAX_BELIEF_MARKERS] if len(belief) > MAX_BELIEF_MARKERS \
        else np.arange(len(belief))  # a 1M-place map: a full sort per frame costs ~80 ms
    top = top[np.argsort(-belief[top], kind="stable")]
    top = top[belief[top] > 0]
    peak = float(belief[top].max()) if len(top) else 1.0
    cloud = _marker(0, "belief", Marker.SPHERE_LIST, frame, stamp, 2 * PLACE_SIZE * spacing, (1.0, 0.4, 0.0, 1.0))
    cloud.points = [_point(positions[i]) for i in top]
    cloud.colors = [ColorRGBA(r=1.0, g=float(0.8 * (1 - belief[i] / peak)), b=0.0, a=float(0.2 + 0.8 * belief[i] / peak))
                    for i in top]
    text = _marker(1, "outside", Marker.TEXT_VIEW_FACING, frame, stamp, 2 * spacing, (1.0, 1.0, 1.0, 1.0))
    anchor = positions[top[0]] if len(top) else np.zeros(3)
    text.pose.position = _point(anchor + np.array([0.0, 0.0, 3 * spacing]))
    text.text = f"outside the map: {100 * outside:.0f} %"
    return MarkerArray(markers=[cloud, text])


def _marker(ident: int, ns: str, kind: int, frame: str, stamp, scale: float, rgba) -> Marker:
    m = Marker()
    m.header.frame_id, m.header.stamp = frame, stamp
    m.ns, m.id, m.type, m.action = ns, ident, kind, Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = float(scale)
    m.color = ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3]))
    return m


def _point(p) -> Point:
    return Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))
