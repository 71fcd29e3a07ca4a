"""The real node, end to end, over real rclpy: Gardens Point map, camera frames in, poses out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (pip install '.[ros]' or source ROS 2)")

from densernet_core.images import read_image  # noqa: E402
from ros_helpers import DOMAIN_ID, LONE_DOMAIN_ID, Client, rss_mb, start_node, stop  # noqa: E402

SIZE = (180, 320)  # 120x160 loses night retrieval (off the shelf: 10/20 correct top-1 there, 17/20 here)
MAP_FRAMES = list(range(0, 200, 5))   # 40 places; position x = frame index
QUERY_FRAMES = list(range(2, 200, 10))  # 20 frames between/at map places
# min_confidence 0.1: these tests want a single-frame pose for most night frames; the default 0.5
# (docs/POSE_MODEL.md) trades fixes for precision.
# The transport, error and shutdown tests send frames 10 places apart, a motion no robot makes: they run
# the single-frame mode; the filter has its own test with frames in order.
PARAMS = (f"image_height:={SIZE[0]}", f"image_width:={SIZE[1]}", "cluster_radius:=6.0", "position_floor:=1.0",
          "min_confidence:=0.1", "mode:=single")


@pytest.fixture(scope="module")
def gp_map(tmp_path_factory, gardens_point, caffe_weights_ready):
    from densernet_core.model.checkpoint import checkpoint_hash
    from densernet_core.cli import make_checkpoint
    from densernet_core.model.checkpoint import load_model
    from densernet_core.datasets import load_traverse
    from densernet_core.mapping.placemap import build_map

    work = tmp_path_factory.mktemp("gpmap")
    data = load_traverse(gardens_point / "day_left", MAP_FRAMES)
    ckpt = make_checkpoint(data.images, work / "model.safetensors", image_size=SIZE, progress=False)
    build_map(load_model(ckpt), ckpt, checkpoint_hash(ckpt), data, work / "map", progress=False)
    return work


@pytest.fixture(scope="module")
def raw_node(gp_map):
    proc = start_node(gp_map / "map", *PARAMS, namespace="stream")
    client = Client(namespace="stream")
    client.wait_matched(proc)
    yield proc, client
    client.close()
    code, out = stop(proc)
    assert code == 0, out


def frame(gp, folder: str, i: int) -> np.ndarray:
    """A camera frame at 320x180: large best-effort messages are often lost by Fast DDS over UDP."""
    import cv2

    return cv2.resize(read_image(gp / folder / f"Image{i:03d}.jpg"), (320, 180), interpolation=cv2.INTER_AREA)


def _stamp(i: int) -> int:
    return 1_700_000_000 * 10 ** 9 + i * 100_000_000


def test_poses_arrive_with_frame_stamp_covariance_and_right_place(raw_node, gardens_point):
    proc, client = raw_node
    sent = {}
    for i in QUERY_FRAMES:
        rgb = frame(gardens_point, "night_right", i)
        msg = client.make_msg(rgb, _stamp(i), encoding="bgr8" if i % 20 == 2 else "rgb8")
        sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = i
        client.send_and_wait(msg)
    assert client.poses, "no pose published"
    correct = 0
    for pose in client.poses:
        key = (pose.header.stamp.sec, pose.header.stamp.nanosec)
        assert key in sent, f"pose stamp {key} is not an image stamp"
        assert pose.header.frame_id == "map"
        cov = np.array(pose.pose.covariance).reshape(6, 6)
        assert np.all(np.diag(cov) > 0)
        correct += abs(pose.pose.pose.position.x - sent[key]) <= 5.0  # within one map spacing
    print(f"{len(client.poses)} poses for {len(sent)} night frames, {correct} within 5 frames")
    assert len(client.poses) >= 0.5 * len(sent)  # measured: 15 poses, 14 correct, of 20 (off the shelf)
    assert correct >= 0.5 * len(sent)
    assert len(client.candidates) >= len(sent) and client.candidates[-1].header.frame_id == "map"
    place = client.places[-1].status[0]
    values = {kv.key: kv.value for kv in place.values}
    assert {"place_id", "score", "confidence", "top_k_ids", "top_k_scores", "processing_ms", "describe_ms",
            "search_ms"} <= set(values)
    assert 0 < float(values["describe_ms"]) <= float(values["processing_ms"])
    assert 0 < float(values["search_ms"]) < float(values["processing_ms"]) - float(values["describe_ms"])


def test_bad_frames_are_counted_and_node_keeps_answering(raw_node, gardens_point):
    proc, client = raw_node
    from sensor_msgs.msg import Image

    rgb = frame(gardens_point, "day_right", 50)
    bad = []
    m = client.make_msg(rgb, _stamp(1001))
    m.encoding = "32FC1"  # a depth image on the camera topic (yuv422_yuy2, used here before, is read since)
    bad.append(m)
    m = client.make_msg(rgb, _stamp(1002))
    m.data = m.data[: len(m.data) // 3]
    bad.append(m)
    m = Image()
    m.encoding, m.height, m.width, m.step = "rgb8", 0, 0, 0
    bad.append(m)
    for m in bad:
        client.pub.publish(m)
        import time
        time.sleep(0.3)
    good = client.make_msg(rgb, _stamp(1003))
    client.send_and_wait(good)
    assert proc.poll() is None

    client.wait_for(lambda: int(_diag_value(client, "bad_frames", -1)) >= 3, 5.0, "diagnostics to count 3 bad frames")
    out_status = [st for arr in client.diagnostics for st in arr.status
                  if st.name == "/stream/densernet_localizer: localization"]
    assert out_status and {kv.key for kv in out_status[-1].values} >= {
        "inference_latency_ms", "frames_dropped", "frames_stale", "input_rate_hz", "map_places"}


def test_back_pressure_keeps_newest_frame_and_memory_flat(raw_node, gardens_point):
    import time

    proc, client = raw_node
    rgb = frame(gardens_point, "day_right", 100)
    msgs = [client.make_msg(rgb, _stamp(2000 + k)) for k in range(60)]
    before = rss_mb(proc.pid)
    for burst in range(2):
        for m in msgs[burst * 30:(burst + 1) * 30]:
            client.pub.publish(m)
            time.sleep(1 / 200)
        last = msgs[(burst + 1) * 30 - 1]
        stamp = (last.header.stamp.sec, last.header.stamp.nanosec)
        client.wait_for(lambda: any((p.header.stamp.sec, p.header.stamp.nanosec) == stamp for p in client.places),
                        30.0, "the newest frame of the burst to be processed")
    answered = [p for p in client.places if p.header.stamp.sec * 10 ** 9 + p.header.stamp.nanosec >= _stamp(2000)]
    assert len(answered) < 60, "every frame was processed: nothing was dropped"
    after = rss_mb(proc.pid)
    assert after - before < 100, f"node memory grew from {before:.0f} to {after:.0f} MB"


def test_camera_outage_turns_diagnostics_warn_and_back(raw_node, gardens_point):
    """No image for input_timeout_s (2 s by default): WARN naming the silence; frames again: it clears."""
    proc, client = raw_node
    client.send_and_wait(client.make_msg(frame(gardens_point, "day_right", 60), _stamp(2500)))

    def latest():
        return client.diagnostics[-1].status[0] if client.diagnostics else None
    client.wait_for(lambda: latest() is not None and latest().message.startswith("no image for"), 10.0,
                    "diagnostics to report the camera outage")
    assert latest().level == latest().WARN
    assert float(_diag_value(client, "seconds_since_last_image")) > 2.0
    client.send_and_wait(client.make_msg(frame(gardens_point, "day_right", 61), _stamp(2501)))
    client.wait_for(lambda: not latest().message.startswith("no image for"), 5.0, "the outage warning to clear")
    assert proc.poll() is None


def test_filtered_night_sequence_beats_single_frame_and_reset_service(gp_map, gardens_point):
    """40 night frames in order, 1 s apart (a walk, 1 frame/s; the map holds every 5th frame): the
    published (filtered) answers fix more frames correctly than the single-frame ones computed beside
    them; place_recognition/reset clears the belief, and so does time going back (the recording played
    again)."""
    from std_srvs.srv import Trigger

    proc = start_node(gp_map / "map", *PARAMS, "mode:=filtered", "max_speed:=6.0", namespace="filter")
    client = Client(namespace="filter")
    try:
        client.wait_matched(proc)
        client.wait_for(lambda: bool(client.diagnostics), 30, "the node's first diagnostics (fully started)")
        frames = list(range(100, 140))
        for k, i in enumerate(frames):
            client.send_and_wait(client.make_msg(frame(gardens_point, "night_right", i), _stamp(4000 + 10 * k)))
        answers = {}
        for arr in client.places:
            v = {kv.key: kv.value for kv in arr.status[0].values}
            answers[arr.header.stamp.sec * 10 ** 9 + arr.header.stamp.nanosec] = v
        single_ok = filtered_ok = 0
        for k, i in enumerate(frames):
            v = answers[_stamp(4000 + 10 * k)]
            assert v["mode"] == "filtered"
            single_ok += v["single_fix"] == "true" and abs(float(v["single_position"].split(",")[0]) - i) <= 5
            filtered_ok += v["filtered_fix"] == "true" and abs(float(v["filtered_position"].split(",")[0]) - i) <= 5
        print(f"correct fixes of 40 night frames: single {single_ok}, filtered {filtered_ok}")
        assert filtered_ok > single_ok and filtered_ok >= 30
        published = [p for p in client.poses if _stamp(4000) <= p.header.stamp.sec * 10 ** 9 + p.header.stamp.nanosec]
        assert len(published) == sum(answers[_stamp(4000 + 10 * k)]["filtered_fix"] == "true" for k in range(40))

        reset = client.node.create_client(Trigger, "place_recognition/reset")
        assert reset.wait_for_service(timeout_sec=10.0)
        reply, sent = client.call(reset, Trigger.Request(), 30.0, "the reset service's answer")
        assert reply.success and "belief reset" in reply.message
        # one reset per request that arrived: the first (sent > 1) may have been lost on the way in, or its reply
        client.wait_for(lambda: 1 <= int(_diag_value(client, "filter_resets") or 0) <= sent, 5.0,
                        "diagnostics to count the reset")
        assert float(_diag_value(client, "belief_effective_places")) > 30  # uniform over 40 places

        # The recording played again, now at 10 frames/s, after the belief converged at its end: time goes
        # back 129 s. A belief kept from frames 130-139 (the code before: no time passed, so no motion) gave
        # 5 confident fixes 20-30 frames wrong among frames 101-105; reset, none wrong, correct from 105.
        for k in range(30, 40):
            end, _ = client.send_and_wait(client.make_msg(frame(gardens_point, "night_right", 100 + k),
                                                          _stamp(4400 + 10 * k)))
        assert end["filtered_fix"] == "true" and abs(float(end["filtered_position"].split(",")[0]) - 139) <= 5
        right = wrong = 0
        for k in range(10):
            v, _ = client.send_and_wait(client.make_msg(frame(gardens_point, "night_right", 100 + k), _stamp(3500 + k)))
            print(f"after the jump back, frame {100 + k}: filtered {v['filtered_fix']} at {v.get('filtered_position')}")
            if v["filtered_fix"] == "true":
                near = abs(float(v["filtered_position"].split(",")[0]) - (100 + k)) <= 5
                right, wrong = right + near, wrong + (not near)
        assert wrong == 0 and right >= 3, (right, wrong)
        client.wait_for(lambda: _diag_value(client, "time_jumps_back") == "1", 5.0, "diagnostics to count the jump")
        assert _diag_value(client, "filter_resets") == "2"
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out


def test_rerank_on_a_map_given_dense_grids_and_off_by_parameter(gp_map, gardens_point, tmp_path):
    """`densernet-map grids` adds dense grids to a map built without them (an off-the-shelf checkpoint's, which
    auto leaves without); the node then re-ranks its top 10 by them and says so in place_recognition/place
    (`rerank_ms`, `global_best`: the place the global descriptor alone put first, among the candidates);
    rerank:=false keeps the global ranking and reports neither."""
    import shutil

    from densernet_core.mapping.cli import main as map_main

    assert not (gp_map / "map" / "dense_grids.json").exists()
    m = tmp_path / "map"
    shutil.copytree(gp_map / "map", m)
    assert map_main(["grids", str(m), "--no-progress"]) == 0
    for rerank in (True, False):
        ns = f"rerank_{str(rerank).lower()}"
        proc = start_node(m, *PARAMS, f"rerank:={str(rerank).lower()}", namespace=ns)
        client = Client(namespace=ns)
        try:
            client.wait_matched(proc)
            v, _ = client.send_and_wait(client.make_msg(frame(gardens_point, "night_right", 120), _stamp(5000)))
            assert ("rerank_ms" in v) is rerank and ("global_best" in v) is rerank, v
            if rerank:
                assert float(v["rerank_ms"]) > 0
                assert v["global_best"] in v["top_k_ids"].split(",")
        finally:
            client.close()
            code, out = stop(proc)
        assert code == 0, out


def test_unstamped_frames_are_filtered_frame_by_frame(gp_map, gardens_point):
    """A camera publisher that leaves header.stamp at zero (a quick script, a driver on a stopped sim clock):
    at its word no time passes between frames and the belief cannot move. The night frames 100-139 in order:
    the code before answered 24 right and 10 confidently wrong fixes; bounded per frame, 32 right, 3 wrong."""
    proc = start_node(gp_map / "map", *PARAMS, "mode:=filtered", namespace="unstamped")
    client = Client(namespace="unstamped")
    try:
        client.wait_matched(proc)
        client.wait_for(lambda: bool(client.diagnostics), 30, "the node's first diagnostics (fully started)")
        right = wrong = 0
        for i in range(100, 140):
            msg, answered = client.make_msg(frame(gardens_point, "night_right", i), 0), len(client.places)
            for _ in range(6):  # best effort: sent again after 5 s unanswered (every answer is stamped 0)
                client.pub.publish(msg)
                try:
                    client.wait_for(lambda: len(client.places) > answered, 5.0, f"the answer to frame {i}")
                    break
                except TimeoutError:
                    continue
            v = {kv.key: kv.value for kv in client.places[-1].status[0].values}
            if v["filtered_fix"] == "true":
                near = abs(float(v["filtered_position"].split(",")[0]) - i) <= 5
                right, wrong = right + near, wrong + (not near)
        print(f"unstamped night frames 100-139, filtered: {right} right, {wrong} wrong")
        assert right >= 28 and wrong <= 5, (right, wrong)
        client.wait_for(lambda: _diag_value(client, "unstamped_frames") == "40", 5.0, "diagnostics to count them")
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out
    assert "image header.stamp is zero" in out


def test_compressed_images_and_corrupt_jpeg(gp_map, gardens_point):
    proc = start_node(gp_map / "map", *PARAMS, "use_compressed:=true", namespace="compressed")
    client = Client(compressed=True, namespace="compressed")
    try:
        client.wait_matched(proc)
        client.wait_for(lambda: bool(client.diagnostics), 30, "the node's first diagnostics (fully started)")
        corrupt = client.make_msg(frame(gardens_point, "night_right", 30), _stamp(3000))
        corrupt.data = b"\xff\xd8\xff\xe0" + b"\x00" * 100
        client.pub.publish(corrupt)
        # before the next frame, which would replace it in the node's one-frame slot if sent at once
        client.wait_for(lambda: "cannot decode compressed image" in _diag_value(client, "last_error", ""), 10.0,
                        "diagnostics to report the corrupt JPEG")
        assert _diag_value(client, "bad_frames") == "1"
        answers = {}
        for i in (42, 72, 152):  # night frames the model is confident on, as JPEGs
            msg = client.make_msg(frame(gardens_point, "night_right", i), _stamp(3001 + i))
            answers[i] = (msg, client.send_and_wait(msg)[0])
        assert proc.poll() is None
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out
    assert "cannot decode compressed image" in out
    # The node decoded each JPEG as the test does (cv2, BGR -> RGB): the same top place and score as this
    # process's localizer on the same bytes (a colour swap or a wrong decode changes both).
    import cv2

    from densernet_core.localization.localizer import Localizer
    from densernet_core.localization.pose import PoseEstimatorConfig

    local = Localizer.from_paths(gp_map / "map", estimator=PoseEstimatorConfig(cluster_radius=6.0, min_confidence=0.1))
    for i, (msg, values) in answers.items():
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        r = local.localize(rgb)
        assert int(values["top_k_ids"].split(",")[0]) == int(r.ids[0]), (i, values["top_k_ids"], r.ids[:3])
        assert abs(float(values["score"]) - float(r.scores[0])) < 2e-3, (i, values["score"], r.scores[0])


def test_startup_errors_exit_nonzero_with_message(gp_map, tmp_path, tiny_model):
    from densernet_core.model.checkpoint import save_checkpoint

    proc = start_node(tmp_path / "no_map", *PARAMS)
    out = proc.communicate(timeout=120)[0]
    code = proc.returncode
    assert code == 1 and "map folder not found" in out
    other = save_checkpoint(tiny_model, tmp_path / "other.safetensors")
    proc = start_node(gp_map / "map", *PARAMS, f"checkpoint:={other}")
    out = proc.communicate(timeout=120)[0]
    code = proc.returncode
    assert code == 1 and "mismatch" in out
    proc = start_node(gp_map / "map", "image_height:=240", "image_width:=320")
    out = proc.communicate(timeout=120)[0]
    code = proc.returncode
    assert code == 1 and "image size" in out
    import torch

    if not torch.cuda.is_available():
        proc = start_node(gp_map / "map", *PARAMS, "device:=cuda")
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 1 and "CUDA is not available" in out


@pytest.mark.parametrize("streaming", [False, True], ids=["idle", "mid-stream"])
def test_sigterm_shuts_down_cleanly(gp_map, gardens_point, streaming):
    """launch, systemd and docker stop the node with SIGTERM: exit 0 and no traceback, whether the node
    idles or its worker and executor are busy with a 30 Hz camera when the signal lands."""
    import signal
    import time

    proc = start_node(gp_map / "map", *PARAMS, namespace="sigterm")
    client = Client(namespace="sigterm")
    try:
        client.wait_matched(proc)
        client.wait_for(lambda: bool(client.diagnostics), 30, "the node's first diagnostics (fully started)")
        if streaming:
            rgb = frame(gardens_point, "night_right", 120)
            end, k = time.monotonic() + 2.0, 0
            while time.monotonic() < end:
                client.pub.publish(client.make_msg(rgb, _stamp(5000 + k)))
                k += 1
                time.sleep(1 / 30)
            assert client.places, "the node answered no frame while streaming"
            proc.send_signal(signal.SIGTERM)  # frames still in flight, the worker mid-inference
            for j in range(5):
                client.pub.publish(client.make_msg(rgb, _stamp(6000 + j)))
        else:
            proc.send_signal(signal.SIGTERM)
    finally:
        client.close()
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def test_spin_ends_cleanly_wherever_a_signal_lands(monkeypatch):
    """The races behind two fresh-clone failures: a SIGTERM that shut the context down before the
    first spin (rclpy.spin's global executor was already None: AttributeError) or while the wait set
    was built (RCLError). Both are shutdowns; an error while the context is valid is raised."""
    import time

    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.executors import SingleThreadedExecutor

    from rclpy.node import Node

    from densernet_ros import node as node_module

    def make_node(name: str) -> Node:
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=LONE_DOMAIN_ID)  # alone: no discovery to race the shutdown
        return Node(name, context=context)

    before = make_node("shut_down_before_spin")
    before.context.shutdown()
    node_module.spin_until_shutdown(before)  # returns, no AttributeError
    before.destroy_node()

    during = make_node("shut_down_while_spinning")
    during.create_timer(0.05, lambda: during.context.shutdown())
    started = time.monotonic()
    node_module.spin_until_shutdown(during)
    assert time.monotonic() - started < 10.0
    during.destroy_node()

    class WaitSetRace(SingleThreadedExecutor):  # the node's own executor only, not other tests' spinners
        def spin_once(self, timeout_sec=None):
            self._context.shutdown()
            raise RCLError("failed to initialize wait set: the given context is not valid")

    monkeypatch.setattr(node_module, "SingleThreadedExecutor", WaitSetRace)
    racing = make_node("wait_set_race")
    node_module.spin_until_shutdown(racing)  # a shutdown, not an error
    racing.destroy_node()

    class Broken(SingleThreadedExecutor):
        def spin_once(self, timeout_sec=None):
            raise RCLError("something else broke")

    monkeypatch.setattr(node_module, "SingleThreadedExecutor", Broken)
    alive = make_node("still_valid")
    with pytest.raises(RCLError, match="something else"):  # the context is still valid: a real error
        node_module.spin_until_shutdown(alive)
    alive.destroy_node()
    alive.context.shutdown()


def test_deactivate_waits_for_a_frame_still_running_before_anything_is_released(monkeypatch):
    """A frame slower than WORKER_STOP_WARN_S (a loaded CPU, a first CUDA call): deactivate says it waits and
    returns only once the worker is done, so that cleanup never frees the model or the publishers under a
    frame still in native code (a SIGSEGV at shutdown before)."""
    import threading
    import time
    from types import SimpleNamespace

    from densernet_ros import node as node_module
    from densernet_ros.frame_slot import FrameSlot

    monkeypatch.setattr(node_module, "WORKER_STOP_WARN_S", 0.2)
    started, log, order = threading.Event(), [], []

    def slow_frame() -> None:
        started.set()
        time.sleep(1.0)  # the frame the worker is on when the node is stopped
        order.append("frame done")

    fake = SimpleNamespace(frames=FrameSlot(), worker=threading.Thread(target=slow_frame), _subs=["sub"],
                           _core_timers=["timer"], robot=SimpleNamespace(stop=lambda: order.append("robot stopped")),
                           get_logger=lambda: SimpleNamespace(warning=log.append),
                           destroy_subscription=lambda s: order.append("subscription destroyed"),
                           destroy_timer=lambda t: order.append("timer destroyed"))
    fake.worker.start()
    started.wait(5)
    node_module.LocalizerNode.deactivate(fake)
    assert order == ["frame done", "subscription destroyed", "timer destroyed", "robot stopped"]
    assert fake.worker is None and len(log) == 1 and "still on a frame after 0.2 s" in log[0]


def test_installed_console_script_starts_from_any_directory(gp_map, tmp_path):
    """`densernet-node --map-dir M` as a pip/venv user runs it: the installed script, another working
    directory, no PYTHONPATH or AMENT_PREFIX_PATH; it must find its installed parameter file."""
    import os
    import signal
    import subprocess
    import sys

    script = Path(sys.prefix) / "bin" / "densernet-node"
    if not script.is_file():
        pytest.skip(f"{script} not installed (`make test` installs the package into the venv first)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "ROS_DOMAIN_ID": str(DOMAIN_ID),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    typo = tmp_path / "typo.yaml"  # a misspelt parameter, which ROS ignores: the node says so
    typo.write_text("/**:\n  ros__parameters:\n    fix_mas: 0.5\n    use_sim_time: false\n"
                    "    bond_disable_heartbeat_timeout: false\n")  # bondpy's, read by bondpy when it needs it
    proc = subprocess.Popen([str(script), "--map-dir", str(gp_map / "map"), "--ros-args", "-r", "__ns:=/installed",
                             *[a for p in PARAMS for a in ("-p", p)], "--params-file", str(typo),
                             "-p", "zzz_unrelated:=1"],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line or "start-up failed" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        out = "".join(lines) + proc.communicate(timeout=30)[0]
    assert "listening on" in out, out
    assert "parameter file not found" not in out
    blas = next(line for line in out.splitlines() if "BLAS threads" in line)  # densernet_core/threads.py
    assert "openblas 1 (" in blas and " 2 (" not in blas, blas
    assert "parameter 'fix_mas' is set but this node has no such parameter: ignored (did you mean 'fix_mass'?)" in out
    assert "parameter 'zzz_unrelated' is set but this node has no such parameter: ignored\n" in out.replace("\r", "")
    assert "'use_sim_time'" not in out and "qos_overrides" not in out and "'bond_disable" not in out
    assert proc.returncode == 0, out


# A test double of tf2_ros.TransformBroadcaster (tf2_ros and tf2_msgs are not on PyPI): it publishes
# each TransformStamped on `test_tf`, so the test sees exactly what the node hands to TF.
FAKE_TF2_ROS = '''
from geometry_msgs.msg import TransformStamped


class TransformBroadcaster:
    def __init__(self, node, qos=100):
        self._pub = node.create_publisher(TransformStamped, "test_tf", 10)

    def sendTransform(self, transform):
        for t in transform if isinstance(transform, list) else [transform]:
            self._pub.publish(t)


class StaticTransformBroadcaster(TransformBroadcaster):
    def __init__(self, node, qos=None):
        from rclpy.qos import DurabilityPolicy, QoSProfile

        self._pub = node.create_publisher(TransformStamped, "test_tf_static",
                                          QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
'''


def _has_tf2_ros() -> bool:
    import importlib.util

    return importlib.util.find_spec("tf2_ros") is not None


def _tf2_or_stand_in(tmp_path: Path) -> tuple[bool, tuple[str, ...]]:
    """Whether the real tf2_ros imports; where it does not, the PYTHONPATH of the stand-in (FAKE_TF2_ROS)."""
    if _has_tf2_ros():
        return True, ()
    fake = tmp_path / "fake_tf2"
    (fake / "tf2_ros").mkdir(parents=True)
    (fake / "tf2_ros" / "__init__.py").write_text(FAKE_TF2_ROS)
    return False, (str(fake),)


def test_publish_tf_without_tf2_ros_exits_with_message(gp_map):
    if _has_tf2_ros():
        pytest.skip("tf2_ros is installed here: the missing-tf2_ros start-up error cannot occur")
    proc = start_node(gp_map / "map", *PARAMS, "publish_tf:=true")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "tf2_ros cannot be imported" in out and "publish_tf" in out


def test_map_to_odom_uses_odometry_at_the_image_stamp(gp_map, gardens_point, tmp_path):
    """Odometry drifted by (3, -1) m and 10 deg; the broadcast map->odom must equal fix * odom(stamp)^-1.

    With tf2_ros importable (a ROS 2 install) the node's real TransformBroadcaster is read from /tf
    through a real tf2 Buffer; without it, through a stand-in with upstream's TransformBroadcaster
    signature that republishes each TransformStamped on `test_tf`."""
    import time

    from geometry_msgs.msg import TransformStamped
    from nav_msgs.msg import Odometry
    from scipy.spatial.transform import Rotation

    from densernet_core.geometry import compose, inverse

    real_tf2, pythonpath = _tf2_or_stand_in(tmp_path)
    proc = start_node(gp_map / "map", *PARAMS, "publish_tf:=true", "tf_rate_hz:=20.0", namespace="map_odom",
                      pythonpath=pythonpath)
    client = Client(namespace="map_odom")
    odom_pub = client.node.create_publisher(Odometry, "odom", 50)
    if real_tf2:
        import tf2_ros
        from rclpy.time import Time

        buffer = tf2_ros.Buffer()
        client.tf_listener = tf2_ros.TransformListener(buffer, client.node)  # kept alive, spun by the client
        tf_topic = "/tf"

        def latest_map_odom():
            if not buffer.can_transform("map", "odom", Time()):
                return None
            return buffer.lookup_transform("map", "odom", Time())
    else:
        tfs: list = []
        client.node.create_subscription(TransformStamped, "test_tf", tfs.append, 10)
        tf_topic = "test_tf"

        def latest_map_odom():
            return tfs[-1] if tfs else None
    print(f"map -> odom read through {'a real tf2 Buffer on /tf' if real_tf2 else 'the tf2_ros stand-in'}")
    drift = (np.array([3.0, -1.0, 0.0]), Rotation.from_euler("z", 10, degrees=True).as_quat())

    def odom_at(x: float, stamp_ns: int) -> Odometry:
        t, q = compose(inverse(drift), (np.array([x, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])))
        m = Odometry()
        m.header.frame_id, m.child_frame_id = "odom", "base_link"
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp_ns, 10 ** 9)
        p, o = m.pose.pose.position, m.pose.pose.orientation
        p.x, p.y, p.z = (float(v) for v in t)
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        return m

    def check_correction(i: int, fix, tf):
        """map -> odom must be fix * odom(stamp)^-1 (odometry at frame i, midway between its two samples)."""
        odom_mid = compose(inverse(drift), (np.array([float(i), 0, 0]), np.array([0.0, 0, 0, 1])))
        fix_tf = (np.array([fix.position.x, fix.position.y, fix.position.z]),
                  np.array([fix.orientation.x, fix.orientation.y, fix.orientation.z, fix.orientation.w]))
        want_t, want_q = compose(fix_tf, inverse(odom_mid))
        got_t = np.array([tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z])
        r = tf.transform.rotation
        np.testing.assert_allclose(got_t, want_t, atol=1e-6)
        assert abs(np.dot(want_q, [r.x, r.y, r.z, r.w])) == pytest.approx(1.0, abs=1e-9)
        return fix_tf, odom_mid, got_t

    try:
        client.wait_matched(proc)
        client.wait_for(lambda: odom_pub.get_subscription_count() > 0 and client.node.count_publishers(tf_topic) > 0,
                        30, "the odometry subscription and the transform publisher")
        checked = []
        for i in (40, 90, 150):
            stamp = _stamp(5000 + i)
            # samples 50 ms either side of the image, the robot moving 0.1 frame per 50 ms
            for dt_ns, dx in ((-50_000_000, -0.1), (50_000_000, 0.1)):
                odom_pub.publish(odom_at(i + dx, stamp + dt_ns))
            time.sleep(0.3)
            _, pose = client.send_and_wait(client.make_msg(frame(gardens_point, "day_right", i), stamp))
            if pose is None:
                continue  # no fix for this frame: nothing to correct
            fix = pose.pose.pose
            sent = len(tfs) if not real_tf2 else 0
            # Longer than transform_tolerance (0.5 s): only the re-broadcasts at tf_rate_hz are stamped ahead of
            # now by then (the node had overwritten rclpy's list of its timers: none was sent between fixes).
            time.sleep(0.8)
            if not real_tf2:
                assert len(tfs) - sent >= 5, f"{len(tfs) - sent} map -> odom broadcasts in 0.8 s at tf_rate_hz 20"
            client.wait_for(lambda: latest_map_odom() is not None, 2.0, "a map -> odom broadcast (diagnostics: "
                            f"odometry_msgs={_diag_value(client, 'odometry_msgs')}, "
                            f"reason={_diag_value(client, 'map_odom_reason')!r})")
            tf = latest_map_odom()
            assert (tf.header.frame_id, tf.child_frame_id) == ("map", "odom")
            ahead = tf.header.stamp.sec + tf.header.stamp.nanosec * 1e-9 - time.time()
            assert 0.0 < ahead <= 0.5  # stamped now + transform_tolerance (0.5 s)
            fix_tf, odom_mid, got_t = check_correction(i, fix, tf)
            if real_tf2:  # tf2's own chaining: map -> odom (node) then odom -> base_link (odometry) = the fix
                odom_base = TransformStamped()
                odom_base.header.stamp, odom_base.header.frame_id, odom_base.child_frame_id = \
                    tf.header.stamp, "odom", "base_link"
                v, q = odom_base.transform.translation, odom_base.transform.rotation
                v.x, v.y, v.z = (float(c) for c in odom_mid[0])
                q.x, q.y, q.z, q.w = (float(c) for c in odom_mid[1])
                buffer.set_transform(odom_base, "test")
                chain = buffer.lookup_transform("map", "base_link", Time.from_msg(tf.header.stamp)).transform
                np.testing.assert_allclose([chain.translation.x, chain.translation.y, chain.translation.z],
                                           fix_tf[0], atol=1e-6)
                cr = chain.rotation
                assert abs(np.dot(fix_tf[1], [cr.x, cr.y, cr.z, cr.w])) == pytest.approx(1.0, abs=1e-9)
            if abs(fix.position.x - i) <= 5.0:  # a correct fix recovers the drift
                np.testing.assert_allclose(got_t[:2], drift[0][:2], atol=5.5)
            checked.append(i)
        assert len(checked) >= 2, "too few fixes to check map -> odom"
        # The same image (so again a fix) stamped long after the last odometry: no new correction,
        # and diagnostics say why.
        last_tf = latest_map_odom().transform.translation.x
        client.send_and_wait(client.make_msg(frame(gardens_point, "day_right", checked[-1]), _stamp(9000)))
        client.wait_for(lambda: "after the odometry" in _diag_value(client, "map_odom_reason", ""), 5,
                        "diagnostics to report the missing odometry")
        assert _diag_value(client, "map_odom_updates") == str(len(checked))
        assert _diag_value(client, "map_odom_skipped") == "1"
        assert latest_map_odom().transform.translation.x == last_tf

        # The recording played again: its odometry from the start once more (time back 11 s), in an odom
        # frame that started again (another drift). The first run's correction is withdrawn; the replay's
        # fixes correct the new frame. (The code before kept the first run's last 10 s of odometry and pruned
        # every replayed sample as too old: no correction again for the whole replay.)
        drift = (np.array([-2.0, 4.0, 0.0]), Rotation.from_euler("z", -20, degrees=True).as_quat())
        i, stamp = checked[0], _stamp(5000 + checked[0])
        for dt_ns, dx in ((-50_000_000, -0.1), (50_000_000, 0.1)):
            odom_pub.publish(odom_at(i + dx, stamp + dt_ns))
        client.wait_for(lambda: _diag_value(client, "odometry_restarts") == "1", 5, "diagnostics to count the restart")
        if not real_tf2:  # the stand-in shows every broadcast: none while there is no correction
            time.sleep(0.3)
            sent = len(tfs)
            time.sleep(0.5)  # ten broadcasts at 20 Hz, were it still sent
            assert len(tfs) == sent, "map -> odom still broadcast after the odometry started again"
        _, pose = client.send_and_wait(client.make_msg(frame(gardens_point, "day_right", i), stamp))
        assert pose is not None, f"frame {i} was fixed in the first run"
        client.wait_for(lambda: _diag_value(client, "map_odom_updates") == str(len(checked) + 1), 5,
                        f"a correction from the replay (map_odom_reason={_diag_value(client, 'map_odom_reason')!r})")
        time.sleep(0.3)
        check_correction(i, pose.pose.pose, latest_map_odom())
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out


def test_a_map_in_utm_metres_is_published_relative_to_its_origin_under_a_utm_frame(raw_node, gp_map, gardens_point,
                                                                                     tmp_path):
    """A map whose places are UTM metres (made from GPS) is published in `map` relative to its origin (its first
    place in whole metres): what the same map in local x/y publishes, moved by the rounding, poses and candidates
    alike; map -> utm (utm a child of map, as navsat_transform has it; minus the origin) goes on /tf_static, and
    diagnostics name it. The code before published UTM northings (5.6e6 m here), which RViz draws in float32
    steps of 0.5 m."""
    import csv
    import shutil

    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile

    shift = np.array([700000.25, 5600000.75, 0.0])  # the origin is (700000, 5600001): local = x + 0.25, y - 0.25
    utm = tmp_path / "utm_map"
    shutil.copytree(gp_map / "map", utm)
    with open(utm / "places.csv", newline="") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        row[2], row[3] = repr(float(row[2]) + float(shift[0])), repr(float(row[3]) + float(shift[1]))
    with open(utm / "places.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    real_tf2, pythonpath = _tf2_or_stand_in(tmp_path)
    _, local_client = raw_node
    proc = start_node(utm, *PARAMS, namespace="utm", pythonpath=pythonpath)
    client = Client(namespace="utm")
    statics: list = []
    if real_tf2:
        import tf2_ros
        from rclpy.time import Time

        buffer = tf2_ros.Buffer()
        client.tf_listener = tf2_ros.TransformListener(buffer, client.node)

        def map_utm():
            return buffer.lookup_transform("map", "utm", Time()) if buffer.can_transform("map", "utm", Time()) else None
    else:
        client.node.create_subscription(TransformStamped, "test_tf_static", statics.append,
                                        QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))

        def map_utm():
            return statics[-1] if statics else None

    def of_stamp(messages, stamp_ns):
        return next(m for m in messages if (m.header.stamp.sec, m.header.stamp.nanosec) == divmod(stamp_ns, 10 ** 9))

    try:
        client.wait_matched(proc)
        fixes = 0
        for i in (40, 90, 150):
            stamp = _stamp(8000 + i)
            msg = client.make_msg(frame(gardens_point, "day_right", i), stamp)
            local_v, local_pose = local_client.send_and_wait(msg)
            v, pose = client.send_and_wait(msg)
            assert (v["fix"], v["top_k_ids"], v["place_id"]) == (local_v["fix"], local_v["top_k_ids"], local_v["place_id"])
            for got, want in ((pose, local_pose), *zip(of_stamp(client.candidates, stamp).poses,
                                                      of_stamp(local_client.candidates, stamp).poses)):
                if want is None:
                    assert got is None
                    continue
                got, want = _position(got), _position(want)
                np.testing.assert_allclose([got.x, got.y, got.z], [want.x + 0.25, want.y - 0.25, want.z], atol=1e-6)
            if pose is not None:
                fixes += 1
                assert pose.header.frame_id == "map"
                np.testing.assert_allclose(pose.pose.covariance, local_pose.pose.covariance, atol=1e-9)
        assert fixes >= 2, "too few fixes to compare the published poses"
        client.wait_for(lambda: map_utm() is not None, 10, "map -> utm on /tf_static")
        tf = map_utm()
        assert (tf.header.frame_id, tf.child_frame_id) == ("map", "utm")
        t = tf.transform.translation  # utm's origin in the map: a place at UTM (700000.25, y) is at x 0.25
        assert (t.x, t.y, t.z, tf.transform.rotation.w) == (-700000.0, -5600001.0, 0.0, 1.0)
        client.wait_for(lambda: _diag_value(client, "map_origin") is not None, 5, "diagnostics naming the origin")
        assert _diag_value(client, "map_origin") == "x 700000, y 5600001 in utm"
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out
    assert "relative to the map's origin" in out


def _position(msg):
    """The position of a published pose (PoseWithCovarianceStamped) or of a candidate (a PoseArray's Pose)."""
    return (msg.pose.pose if hasattr(msg, "header") else msg).position


def _diag_value(client, key: str, default=None):
    for arr in reversed(client.diagnostics):
        for st in arr.status:
            values = {kv.key: kv.value for kv in st.values}
            if key in values:
                return values[key]
    return default


def test_node_attributes_do_not_replace_rclpy_ones():
    """The node is an rclpy Node (or LifecycleNode) subclass: an attribute of ours with the name of one of
    rclpy's replaces it. `self._timers = [...]` replaced the list rclpy's executor reads its timers from, so
    the map -> odom re-broadcast timer never ran (found 2026-12-07)."""
    import inspect
    import re

    import rclpy.lifecycle
    import rclpy.node

    from densernet_ros import lifecycle, node

    def assigned(source: str) -> set[str]:
        return set(re.findall(r"self\.(\w+)\s*(?::[^=\n]+)?=(?!=)", source))

    theirs = (assigned(inspect.getsource(rclpy.node)) | assigned(inspect.getsource(rclpy.lifecycle.node))
              | set(dir(rclpy.lifecycle.LifecycleNode)))
    assert {"_timers", "_subscriptions", "timers"} <= theirs  # the scan sees rclpy's own
    ours = assigned(inspect.getsource(node)) | assigned(inspect.getsource(lifecycle))
    assert {"stats", "robot", "localizer"} <= ours
    assert not ours & theirs, f"node attributes that replace rclpy's: {sorted(ours & theirs)}"


def test_parameter_file_matches_declared_parameters():
    import yaml
    from ros_helpers import ROOT

    from densernet_ros.node import PARAMETERS

    params = yaml.safe_load((ROOT / "config" / "localize.yaml").read_text())["/**"]["ros__parameters"]
    assert set(params) == set(PARAMETERS)
    for name, value in params.items():
        default = PARAMETERS[name][0]
        assert value == default and type(value) is type(default), f"{name}: file {value!r}, node {default!r}"


def test_rgb_to_image_round_trips_through_the_node_conversion():
    from densernet_ros.image_conversion import image_to_rgb, rgb_to_image

    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    for encoding in ("rgb8", "bgr8"):
        msg = rgb_to_image(rgb, 3 * 10 ** 9 + 5, encoding)
        assert (msg.encoding, msg.header.stamp.sec, msg.header.stamp.nanosec) == (encoding, 3, 5)
        np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    with pytest.raises(ValueError, match="mono8"):
        rgb_to_image(rgb, encoding="mono8")


def test_tool_parameter_overrides_reach_both_ways_of_starting_the_node(tmp_path):
    """The demo and the node benchmark override parameters: on the console entry as -p, for
    `ros2 launch` (which takes no per-parameter arguments) as a copy of the parameter file."""
    import yaml
    from ros_helpers import ROOT

    from densernet_ros.harness import check_node_params, write_params_file

    path = write_params_file({"cluster_radius": 2.5, "max_frame_wait_s": 0.0}, tmp_path / "p.yaml")
    got = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    default = yaml.safe_load((ROOT / "config" / "localize.yaml").read_text())["/**"]["ros__parameters"]
    assert got == {**default, "cluster_radius": 2.5, "max_frame_wait_s": 0.0}
    assert default["cluster_radius"] != 2.5 and default["max_frame_wait_s"] != 0.0
    with pytest.raises(ValueError, match="unknown node parameter.*cluster_radus"):
        check_node_params({"cluster_radus": 2.5})


def test_tools_wait_names_what_stalled_and_a_node_that_exited():
    """The demo, the benchmarks and these tests wait through one helper: it returns once ready, and
    otherwise says what it waited for, and whether the node died first or time ran out."""
    import subprocess
    import sys

    from densernet_ros.harness import wait_until

    ticks = iter(range(100))
    assert wait_until(lambda: next(ticks) >= 3, 5.0, "three ticks", poll_s=0.001) < 5.0
    with pytest.raises(TimeoutError, match=r"after 0.05 s waiting for the answer to frame 7"):
        wait_until(lambda: False, 0.05, "the answer to frame 7", poll_s=0.01)
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match="node exited with code 3 while waiting for the node to come up"):
        wait_until(lambda: False, 30.0, "the node to come up", dead)


@pytest.fixture(scope="module")
def street_map(tmp_path_factory, caffe_weights_ready):
    """A metric map of the synthetic 3-D street (exact geometry): 12 places, 3-D points, SIFT features."""
    from densernet_core.camera import load_camera
    from densernet_core.cli import make_checkpoint
    from densernet_core.datasets import load_csv
    from densernet_core.demo.street3d import StreetConfig, generate
    from densernet_core.mapping.placemap import build_map
    from densernet_core.model.checkpoint import checkpoint_hash, load_model

    work = tmp_path_factory.mktemp("street")
    paths = generate(work / "route", StreetConfig(places=12))
    db = load_csv(paths["map"])
    ckpt = make_checkpoint(db.images, work / "model.safetensors", image_size=(240, 320), progress=False)
    build_map(load_model(ckpt), ckpt, checkpoint_hash(ckpt), db, work / "map",
              camera=load_camera(work / "route" / "map" / "camera.yaml"), progress=False)
    return work, load_csv(paths["query"])


def test_metric_pose_published_with_its_orientation_and_a_smaller_covariance(street_map):
    """A map with 3-D points: the node publishes the PnP pose (the camera's full 3-D orientation, pitch
    included) with a covariance smaller than the place estimate's, and says so in the place status."""
    from scipy.spatial.transform import Rotation

    work, queries = street_map
    proc = start_node(work / "map", "mode:=single", namespace="metric")
    client = Client(namespace="metric")
    try:
        client.wait_matched(proc)
        client.wait_for(lambda: bool(client.diagnostics), 30, "the node's first diagnostics (fully started)")
        metric = 0
        for k in range(3, 9):
            msg = client.make_msg(read_image(queries.images[k]), _stamp(7000 + k))
            v, pose = client.send_and_wait(msg)
            if v["pose_source"] != "metric":
                continue
            metric += 1
            assert float(v["pose_sigma"]) < float(v["place_sigma"])
            o = pose.pose.pose.orientation
            err = (Rotation.from_quat([o.x, o.y, o.z, o.w]) * Rotation.from_quat(queries.orientations[k]).inv())
            assert np.degrees(err.magnitude()) < 2.0  # the camera's pitch and yaw, not a planar yaw
            p = pose.pose.pose.position
            assert np.linalg.norm([p.x - queries.positions[k, 0], p.y - queries.positions[k, 1],
                                   p.z - queries.positions[k, 2]]) < 0.2
        print(f"metric poses: {metric} of 6 query frames")
        assert metric >= 5
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out


def test_node_on_the_onnxruntime_backend(gp_map, gardens_point, tmp_path, tiny_model):
    """backend:=onnxruntime with an engine exported from the map's checkpoint answers like torch; an
    engine from another checkpoint ends the start-up with exit 1 and says so."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is a dev extra")
    from densernet_core.model.checkpoint import save_checkpoint
    from densernet_core.model.runtime import export_onnx

    engine = export_onnx(gp_map / "model.safetensors", tmp_path / "model.onnx")
    proc = start_node(gp_map / "map", *PARAMS, "backend:=onnxruntime", f"engine:={engine}", namespace="ort")
    client = Client(namespace="ort")
    try:
        client.wait_matched(proc)
        sent = {}
        for i in QUERY_FRAMES[:6]:
            msg = client.make_msg(frame(gardens_point, "day_right", i), _stamp(9000 + i))
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = i
            client.send_and_wait(msg)
        right = [abs(p.pose.pose.position.x - sent[(p.header.stamp.sec, p.header.stamp.nanosec)]) <= 5.0
                 for p in client.poses]
        assert len(right) >= 4 and sum(right) >= 4, right  # day frames against a day map
        client.wait_for(lambda: _diag_value(client, "backend") == "onnxruntime", 10, "diagnostics naming the backend")
        places = {(m.header.stamp.sec, m.header.stamp.nanosec): {kv.key: kv.value for kv in m.status[0].values}
                  for m in client.places}
    finally:
        client.close()
        code, out = stop(proc)
    assert code == 0, out
    # It answers like torch: this process's torch localizer on the same frames, the same top places and scores.
    from densernet_core.localization.localizer import Localizer
    from densernet_core.localization.pose import PoseEstimatorConfig
    from densernet_ros.image_conversion import image_to_rgb

    torch_loc = Localizer.from_paths(gp_map / "map", estimator=PoseEstimatorConfig(cluster_radius=6.0))
    for key, i in sent.items():
        r = torch_loc.localize(image_to_rgb(client.make_msg(frame(gardens_point, "day_right", i), 0)))
        node_ids = [int(v) for v in places[key]["top_k_ids"].split(",")]
        assert node_ids[:3] == [int(v) for v in r.ids[:3]], (i, node_ids[:3], r.ids[:3])
        assert abs(float(places[key]["score"]) - float(r.scores[0])) < 5e-3
    foreign = export_onnx(save_checkpoint(tiny_model, tmp_path / "other.safetensors"), tmp_path / "other.onnx")
    proc = start_node(gp_map / "map", *PARAMS, "backend:=onnxruntime", f"engine:={foreign}")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "export it again" in out
