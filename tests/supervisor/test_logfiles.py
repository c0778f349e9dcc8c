"""The log files without processes: the chunk splitter, the rotating writer, the sink, and
the reader that merges the files back (real files in tmp_path)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from devcluster.supervisor import logread
from devcluster.supervisor.logfiles import Cap, LineSplitter, RotatingFile, rotated, stamp
from devcluster.supervisor.logs import LogSink


def feed_all(chunks: list[bytes], max_line: int = 1 << 20) -> list[bytes]:
    splitter, lines = LineSplitter(max_line), []
    for chunk in chunks:
        block = splitter.feed(chunk)
        if block is not None:
            lines += block.split(b"\n")
    last = splitter.flush()
    return lines + ([last] if last is not None else [])


# -- the splitter ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 4096])
def test_lines_cut_anywhere_by_chunks_come_out_whole(size: int) -> None:
    text = b"".join(b"line %d %s\n" % (i, b"x" * (i % 13)) for i in range(500)) + b"\n"
    chunks = [text[i:i + size] for i in range(0, len(text), size)]
    assert feed_all(chunks) == text.split(b"\n")[:-1]


def test_an_unfinished_last_line_is_given_at_the_end() -> None:
    assert feed_all([b"a\nb", b"c"]) == [b"a", b"bc"]


def test_a_line_longer_than_the_limit_is_cut_and_memory_stays_bounded() -> None:
    splitter = LineSplitter(max_line=1000)
    pieces = []
    for _ in range(300):  # 300 KB without a newline
        block = splitter.feed(b"y" * 1000)
        if block is not None:
            pieces.append(block)
        assert splitter._size < 1000
    assert sum(map(len, pieces)) == 300_000 and max(map(len, pieces)) <= 2000
    block = splitter.feed(b"tail\nnext\n")
    assert block == b"tail\nnext"


# -- the rotating writer -----------------------------------------------------------------

def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def test_a_file_past_its_cap_rotates_and_the_oldest_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    f = RotatingFile(path, Cap(max_bytes=1000, keep=2))
    written = [b"%05d %s" % (i, b"z" * 40) for i in range(200)]  # 46 bytes a line
    for i in range(0, 200, 7):
        f.write(b"".join(line + b"\n" for line in written[i:i + 7]))
    f.close()
    files = [path, rotated(path, 1), rotated(path, 2)]
    assert all(p.stat().st_size <= 1000 for p in files)
    assert not rotated(path, 3).exists()
    kept = [ln for p in reversed(files) for ln in lines_of(p)]
    assert kept == written[-len(kept):]  # whole lines, in order, none twice
    assert len(kept) >= 2 * (1000 // 46)


def test_keep_zero_keeps_only_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    f = RotatingFile(path, Cap(max_bytes=100, keep=0))
    for i in range(50):
        f.write(b"line %02d\n" % i)
    f.close()
    assert path.stat().st_size <= 100 and not rotated(path, 1).exists()
    assert lines_of(path)[-1] == b"line 49"


def test_a_line_longer_than_a_whole_file_is_cut_at_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    f = RotatingFile(path, Cap(max_bytes=100, keep=5))
    f.write(b"q" * 350 + b"\n")
    f.close()
    sizes = [p.stat().st_size for p in (path, *(rotated(path, n) for n in range(1, 4)))]
    assert sizes == [51, 100, 100, 100]


def test_a_lowered_cap_rotates_at_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"old\n" * 100)
    f = RotatingFile(path, Cap(max_bytes=50, keep=1))
    f.write(b"new\n")
    f.close()
    assert lines_of(path) == [b"new"] and len(lines_of(rotated(path, 1))) == 100


def test_a_planted_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    path = tmp_path / "a.log"
    path.symlink_to(target)
    f = RotatingFile(path)
    f.write(b"line\n")
    f.close()
    assert target.read_text() == "keep me\n"
    assert not path.is_symlink() and lines_of(path) == [b"line"] and f.replaced_link


def test_a_deleted_file_is_opened_again_on_refresh(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    f = RotatingFile(path)
    f.write(b"one\n")
    assert not f.refresh()
    path.unlink()
    f.write(b"lost\n")  # to the deleted file, until the keeper's next look
    assert f.refresh() and path.exists()
    f.write(b"two\n")
    f.close()
    assert lines_of(path) == [b"two"]


# -- the sink and the reader -------------------------------------------------------------

def test_each_line_is_written_once_and_merged_on_read_in_order(tmp_path: Path) -> None:
    console = io.StringIO()
    sink = LogSink(tmp_path, console)
    sink.system("greeter.1 started")
    sink.output("greeter.1", b"hello\r\nworld")
    sink.system("greeter.1 serving")
    sink.output("web", b"up")
    sink.close()
    assert [ln.split(b" ", 1)[1] for ln in lines_of(tmp_path / "devcluster.log")] == [
        b"greeter.1 started", b"greeter.1 serving"]
    assert [ln.split(b" ", 1)[1] for ln in lines_of(tmp_path / "greeter.1.log")] == [
        b"hello", b"world"]
    merged = logread.shown(tmp_path, None, 50)
    assert [m[9:] for m in merged] == [
        "devcluster | greeter.1 started", "greeter.1  | hello", "greeter.1  | world",
        "devcluster | greeter.1 serving", "web        | up"]
    assert console.getvalue().splitlines() == merged  # what the terminal showed
    assert logread.shown(tmp_path, "greeter.1", 1) == [merged[2][:9] + "world"]


def test_the_merged_tail_reaches_into_rotated_files(tmp_path: Path) -> None:
    sink = LogSink(tmp_path)
    for i in range(60):
        sink.output("a", b"%03d %s" % (i, b"w" * 60), Cap(max_bytes=4096, keep=3))
    sink.close()
    assert rotated(tmp_path / "a.log", 1).exists()
    assert [ln.text[:3] for ln in logread.last(tmp_path, "a", 60)] == [
        f"{i:03d}" for i in range(60)]
    assert len(logread.last(tmp_path, None, 10)) == 10


def test_a_follower_left_behind_past_log_keep_goes_on_without_repeats(tmp_path: Path) -> None:
    sink = LogSink(tmp_path)
    sink.output("a", b"before")
    follower = logread._Follower(tmp_path / "a.log", "a", from_start=False)
    seen: list[int] = []
    for i in range(200):  # 128 bytes a line, keep 1: the follower's file is dropped
        sink.output("a", b"%03d %s" % (i, b"v" * 100), Cap(max_bytes=4096, keep=1))
        if i % 90 == 89:
            seen += [int(ln.text[:3]) for ln in follower.read()]
    seen += [int(ln.text[:3]) for ln in follower.read()]
    sink.close()
    follower.close()
    assert seen == sorted(set(seen)) and seen[-1] == 199 and len(seen) >= 64


def test_lines_without_a_stamp_are_shown_as_written(tmp_path: Path) -> None:
    (tmp_path / "devcluster.log").write_text(f"12:00:00 old format\n"
                                             f"{stamp(1.5).decode()} new\n")
    shown = logread.shown(tmp_path, None, 5)
    assert shown[0] == "12:00:00 old format" and shown[1].endswith("devcluster | new")


def test_stamps_order_to_the_microsecond() -> None:
    assert stamp(100.000001) < stamp(100.000002) < stamp(101.0)
    assert len(stamp()) == len("2026-12-06T15:30:01.123456")


@pytest.mark.parametrize("every", [20, 75], ids=["a rotation a read", "2 between reads"])
def test_following_reads_across_rotations_and_a_re_creation(tmp_path: Path, every: int) -> None:
    path = tmp_path / "a.log"
    sink = LogSink(tmp_path)
    sink.output("a", b"before")
    follower = logread._Follower(path, "a", from_start=False)
    seen: list[str] = []
    cap = Cap(max_bytes=4096, keep=3)
    for i in range(100):  # 128 bytes a line: a rotation every 32 lines
        sink.output("a", b"%03d %s" % (i, b"v" * 100), cap)
        if i % every == every - 1:
            seen += [ln.text[:3] for ln in follower.read()]
    seen += [ln.text[:3] for ln in follower.read()]
    os.unlink(path)
    sink.refresh()
    sink.output("a", b"after")
    seen += [ln.text for ln in follower.read()]
    sink.close()
    follower.close()
    assert seen == [f"{i:03d}" for i in range(100)] + ["after"]


def test_unread_output_is_counted_until_someone_reads_it() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "print('x' * 99, flush=True); input()"],
                             stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    try:
        assert child.stdout is not None
        fd = child.stdout.fileno()  # unbuffered reads: the rest stays in the pipe
        assert os.read(fd, 1) == b"x"  # it printed: the rest is now in the pipe
        assert logread.unread(child.pid) == 99  # 98 x and the newline
        assert logread.wait_read([child.pid], 0.05) is False  # bounded: nobody reads
        assert len(os.read(fd, 99)) == 99
        assert logread.unread(child.pid) == 0 and logread.wait_read([child.pid], 0.05)
    finally:
        child.kill()
        child.wait()
    assert logread.unread(child.pid) == 0, "a process that is gone has nothing unread"
