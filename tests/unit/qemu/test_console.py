"""The guest's console lines and the hand-off verdict (pure; no QEMU).

Covers: parsing heartbeats, READY, write progress and crash markers; the write rate derived from
the guest's own progress lines; the hand-off verdict for a good migration, a second boot, an oops,
a gap or a restart in the heartbeats, a changed checksum, and too few heartbeats yet (pending).
"""

from __future__ import annotations

from sod_testbed.qemu.console import check_handoff, parse_console, write_rate_mib_s

SUM = "0123456789abcdef0123456789abcdef"
OTHER = "ffffffffffffffffffffffffffffffff"


def beats(*numbers: int, checksum: str = SUM) -> str:
    return "".join(f"MIGTEST beat={n} sum={checksum} up={n}.50\n" for n in numbers)


SOURCE = f"MIGTEST BOOT\nMIGTEST READY mode=idle sum={SUM}\n" + beats(1, 2, 3)


def test_parse_reads_the_guest_markers_and_ignores_noise() -> None:
    con = parse_console(SOURCE + "random kernel line\nMIGTEST beat=4 sum=cut-in-ha")
    assert con.boots == 1
    assert con.ready_sum == SUM
    assert [b[0] for b in con.beats] == [1, 2, 3]
    assert con.last_beat == 3
    assert not con.crash_lines


def test_write_rate_comes_from_the_guests_progress_lines() -> None:
    con = parse_console(
        "MIGTEST DIRTY FILLED wss=256 up=8.00\n"
        "MIGTEST w=64 up=8.00\nMIGTEST w=128 up=10.00\nMIGTEST w=192 up=12.00\n"
    )
    assert con.filled
    assert write_rate_mib_s(con) == 32.0
    assert write_rate_mib_s(con, since_uptime=11.0) is None


def test_a_guest_that_goes_on_intact_passes() -> None:
    check = check_handoff(parse_console(SOURCE), parse_console(beats(4, 5, 6)), SUM)
    assert check.ok, check.reason
    assert check.source_last_beat == 3
    assert check.target_beats == 3


def test_a_heartbeat_lost_at_the_switch_over_is_tolerated() -> None:
    assert check_handoff(parse_console(SOURCE), parse_console(beats(5, 6)), SUM).ok


def test_a_reboot_on_the_target_fails() -> None:
    target = "MIGTEST BOOT\n" + beats(1, 2)
    check = check_handoff(parse_console(SOURCE), parse_console(target), SUM)
    assert not check.ok
    assert "booted again" in check.reason


def test_a_kernel_oops_on_the_target_fails() -> None:
    target = beats(4) + "BUG: kernel tried to execute NX-protected page\n" + beats(5)
    check = check_handoff(parse_console(SOURCE), parse_console(target), SUM)
    assert not check.ok
    assert "kernel trouble" in check.reason


def test_heartbeats_that_jump_or_go_back_fail() -> None:
    for target in (beats(9, 10), beats(2, 3), beats(4, 6)):
        assert not check_handoff(parse_console(SOURCE), parse_console(target), SUM).ok


def test_a_changed_integrity_checksum_fails() -> None:
    target = beats(4) + beats(5, checksum=OTHER)
    check = check_handoff(parse_console(SOURCE), parse_console(target), SUM)
    assert not check.ok
    assert "checksum" in check.reason


def test_too_few_heartbeats_is_pending_not_final() -> None:
    check = check_handoff(parse_console(SOURCE), parse_console(beats(4)), SUM)
    assert not check.ok
    assert check.pending
    assert not check_handoff(parse_console(SOURCE), parse_console(beats(9, 10)), SUM).pending
