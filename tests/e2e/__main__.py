r"""The e2e testbed by hand.

    python -m tests.e2e run --vnuma '<xl.cfg vnuma list>' --memory 1024 --vcpus 4 \
        -- guestagent topology --json
    python -m tests.e2e run --pv -- guestagent topology --json
    python -m tests.e2e run --dom0 -- xl info -n
    python -m tests.e2e run --host-numa2 --dom0 -- xl info -n
    python -m tests.e2e build      # fetch and build every artefact (cached), boot nothing
    python -m tests.e2e pins       # pinned versions against what apt would fetch now
    python -m tests.e2e boots 20 --vnuma '<xl.cfg vnuma list>' --vcpus 4 [--load 'stress-ng ...']
                                   # boot one guest shape N times, count the deaths (boots.py)
    python -m tests.e2e boots 3 --shape hvm-2x2 --shape pv-4 --max-minutes 25
                                   # named shapes in turns, inside a bed time budget
    python -m tests.e2e boots 10 --shape hvm-2x4 --shape hvm-pt --host-numa2 --max-minutes 50
                                   # on the 2-node layout, with the passthrough guest

``run`` boots Xen, creates the guest, runs the command (a shell command line), prints its output and
exits with its status; everything is torn down afterwards. Serial logs stay under tests/e2e/runs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e import artefacts, boots, passthrough, preflight, rootfs, versions
from tests.e2e import pins as pinning
from tests.e2e.bed import BedConfig, Guest, GuestSpec, XenBed, acquire_bed_lock, run_probe
from tests.e2e.util import BedError, Dom0Lost, GuestDied, log


def cmd_run(args: argparse.Namespace) -> int:
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("e2e run: give the command after --", file=sys.stderr)
        return 2
    script = command[0] if len(command) == 1 else shlex.join(command)
    config = BedConfig(host_numa2=args.host_numa2, with_agent=not args.no_agent, run_name="cli",
                       guest_debs=args.debs, pin_hvm_off_cpu0=not args.no_pin_hvm)
    with XenBed(config) as bed:
        if args.dom0:
            out, rc = bed.dom0(script, timeout=args.timeout)
        else:
            if args.pv:
                if args.vnuma:
                    print("e2e run: --pv and --vnuma exclude each other (Xen has no PV vNUMA)",
                          file=sys.stderr)
                    return 2
                spec = GuestSpec.pv(memory=args.memory, vcpus=args.vcpus, kernel=args.kernel)
            else:
                spec = GuestSpec.hvm(memory=args.memory, vcpus=args.vcpus, vnuma=args.vnuma,
                                     kernel=args.kernel)
            if args.systemd:
                spec.init = "systemd"
            with bed.guest(spec) as g:
                out, rc = g.run(script, timeout=args.timeout)
        sys.stdout.write(out)
        sys.stdout.flush()
        log("timings: " + ", ".join(f"{name} {secs:.1f}s" for name, secs in bed.timings))
    return rc


def _guest_spec(args: argparse.Namespace) -> GuestSpec:
    memory = args.memory or 1024
    vcpus = args.vcpus or 4
    if args.pv:
        if args.vnuma:
            raise BedError("--pv and --vnuma exclude each other (Xen has no PV vNUMA)")
        return GuestSpec.pv(memory=memory, vcpus=vcpus, kernel=args.kernel)
    return GuestSpec.hvm(memory=memory, vcpus=vcpus, vnuma=args.vnuma, kernel=args.kernel)


def _shape_spec(shape: boots.Shape, kernel: str, host_nodes: int = 1) -> GuestSpec:
    """The guest of a named shape on a host of ``host_nodes`` nodes; its guests are called
    ``<shape>-<n>``. A passthrough shape's ``pci=`` line is added at each boot
    (:func:`_with_device`): the host BDF is Dom0's to say."""
    make = GuestSpec.pv if shape.type == "pv" else GuestSpec.hvm
    spec = make(memory=shape.memory, vcpus=shape.vcpus, name=f"{shape.name}-", kernel=kernel)
    spec.vnuma = shape.vnuma(host_nodes)
    return spec


def _with_device(bed: XenBed, spec: GuestSpec, vendor_device: str) -> GuestSpec:
    """``spec`` with the host's ``vendor_device`` function passed through, made assignable in
    Dom0 first (idempotent, as test_dom0_devices.py does)."""
    bdf = passthrough.host_bdf(bed.dom0_ok, vendor_device)
    bed.dom0_ok(passthrough.assignable_script(bdf))
    return dataclasses.replace(spec, extra=[*spec.extra, passthrough.xl_pci(bdf)])


def _probe(bed: XenBed, g: Guest, script: str) -> None:
    """``--dom0-probe``: a Dom0 script run once the guest's command is done (``{domid}`` is the
    guest's), its output kept in ``<guest>.probe`` in the run directory; a failure is logged."""
    if not script:
        return
    out, rc = run_probe(bed, g.name, g.domid, script, "probe")
    log(f"{g.name} probe (status {rc}): {out.strip()[-300:]}")


def _one_boot(bed: XenBed, spec: GuestSpec, n: int, args: argparse.Namespace,
              shape: str = "custom") -> boots.Boot:
    t0 = time.monotonic()
    name, boot_s = "?", 0.0
    device = boots.SHAPES[shape].passthrough if shape in boots.SHAPES else ""
    try:
        if device:
            spec = _with_device(bed, spec, device)
        with bed.guest(spec, retries=0) as g:
            name, boot_s = g.name, g.boot_seconds
            try:
                g.run_ok(args.command, timeout=args.timeout)
                missing = (boots.device_missing(g.run_ok(passthrough.PCI_LISTING), device)
                           if device else "")
                _probe(bed, g, getattr(args, "dom0_probe", ""))
                if missing:
                    return boots.Boot(n, name, "no device", time.monotonic() - t0, missing, [],
                                      shape, boot_s)
            except GuestDied as e:
                return boots.Boot(n, name, "died", time.monotonic() - t0, str(e),
                                  boots.rips_in(str(e)), shape, boot_s)
            except BedError as e:
                lost = bed.dom0_lost(e)
                if lost is not None:
                    raise lost from e
                return boots.Boot(n, name, "error", time.monotonic() - t0, str(e), [], shape,
                                  boot_s)
    except BedError as e:
        # Lost under the guest (Dom0Lost), or e.g. the device listing before it had no answer.
        lost = e if isinstance(e, Dom0Lost) else bed.dom0_lost(e)
        if lost is not None:
            return boots.Boot(n, name, "dom0 lost", time.monotonic() - t0, str(lost), [], shape,
                              boot_s)
        m = re.search(r"guest (\S+) did not boot", str(e))
        return boots.Boot(n, m.group(1) if m else name, boots.boot_failure(str(e)),
                          time.monotonic() - t0, str(e), boots.rips_in(str(e)), shape)
    return boots.Boot(n, name, "ok", time.monotonic() - t0, shape=shape, boot_seconds=boot_s)


def _check_shapes(args: argparse.Namespace) -> None:
    """BedError, before any bed, for ``--shape`` with size options or without the host layout a
    shape needs."""
    if args.shape and (args.vnuma or args.pv or args.memory or args.vcpus):
        raise BedError("--shape names the whole guest: give no --vnuma, --pv, --memory, --vcpus")
    missing_layout = boots.host_numa2_missing(args.shape, args.host_numa2)
    if missing_layout:
        raise BedError(missing_layout)


def _boots_setup(args: argparse.Namespace) -> tuple[list[tuple[str, GuestSpec, str]], BedConfig,
                                                    str]:
    """The guests to boot (each with its label and a one-line description), the bed, and the
    settings every boot shares, for ``boots``."""
    _check_shapes(args)
    host_nodes = 2 if args.host_numa2 else 1
    config = BedConfig(host_numa2=args.host_numa2, run_name="boots", cpus=args.smp,
                       pin_hvm_off_cpu0=not args.no_pin_hvm)
    config.outer_cpu = args.outer_cpu or config.outer_cpu
    config.hang_probe = args.hang_probe
    config.xen_keys = args.xen_keys
    config.xen_extra = args.xen_cmdline
    settings = [*args.xl]
    if args.cmdline:
        settings.append(f"cmdline +{args.cmdline}")
    if args.outer_cpu:
        settings.append(f"outer -cpu {args.outer_cpu}")
    if args.xen_cmdline:
        settings.append(f"Xen +{args.xen_cmdline}")
    if args.smp != 4:
        settings.append(f"outer -smp {args.smp}")
    if args.shape:
        guests = [(name, _shape_spec(boots.SHAPES[name], args.kernel, host_nodes),
                   boots.SHAPES[name].describe(host_nodes)) for name in args.shape]
    else:
        spec = _guest_spec(args)
        guests = [("custom", spec, f"{spec.type} {spec.vcpus} vCPUs {spec.memory} MiB"
                   + (f" vnuma {args.vnuma}" if args.vnuma else ""))]
    out = []
    for label, spec, text in guests:
        spec.extra += [*(boots.SHAPES[label].xl if label in boots.SHAPES else ()), *args.xl]
        spec.cmdline_extra = args.cmdline
        if args.boot_timeout:
            spec.boot_timeout = args.boot_timeout
        pinned = " (pinned off pCPU 0)" if config.pin_hvm_off_cpu0 and spec.type == "hvm" else ""
        own = list(boots.SHAPES[label].xl) if label in boots.SHAPES else []
        out.append((label, spec, "; ".join([text + pinned, *own, *settings])))
    return out, config, "; ".join(settings)


def _start_load(command: str) -> subprocess.Popen[bytes] | None:
    if not command:
        return None
    load = subprocess.Popen(shlex.split(command), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"load beside the bed: {command} (process group {load.pid})")
    return load


def _stop_load(load: subprocess.Popen[bytes] | None) -> None:
    if load is None:
        return
    os.killpg(load.pid, signal.SIGTERM)
    try:
        load.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(load.pid, signal.SIGKILL)
        load.wait(10)


def _boot_rounds(bed: XenBed, guests: list[tuple[str, GuestSpec, str]],
                 args: argparse.Namespace, t_start: float, results: list[boots.Boot]) -> list[str]:
    """Boot each guest ``args.n`` times, in turns, inside the time budget; the boots not started
    because of the budget, as ``label #round``."""
    specs = {label: spec for label, spec, _text in guests}
    order = boots.rounds(list(specs), args.n)
    skipped: list[str] = []
    budget = boots.budget_seconds(args.max_minutes, getattr(args, "end_by", ""),
                                  time.time() - (time.monotonic() - t_start))
    for r, label in order:
        elapsed = time.monotonic() - t_start
        seen = [b.seconds for b in results if b.shape == label]
        if not boots.fits(elapsed, budget, specs[label].type, seen):
            skipped.append(f"{label} #{r}")
            log(f"boot {label} #{r} not started: {elapsed / 60:.1f} of the budget's "
                f"{budget / 60:.1f} min gone")
            continue
        t0 = time.monotonic()
        try:
            results.append(_one_boot(bed, specs[label], r, args, label))
        except KeyboardInterrupt:
            results.append(boots.Boot(r, "?", "interrupted", time.monotonic() - t0, shape=label))
            raise
        b = results[-1]
        log(f"boot {label} #{r}/{args.n}: {b.outcome} ({b.seconds:.0f} s, shell after "
            f"{b.boot_seconds:.0f} s)")
    return skipped


def _boots_report(run: str, guests: list[tuple[str, GuestSpec, str]], args: argparse.Namespace,
                  results: list[boots.Boot], skipped: list[str], bed_minutes: float) -> list[str]:
    lines = [f"{boots.stamp()} run {run}; {bed_minutes:.1f} min of bed time"
             + (f" (budget {args.max_minutes:g} min)" if args.max_minutes else "")]
    for label, _spec, text in guests:
        mine = [b for b in results if b.shape == label]
        lines += boots.summary(mine, (f"{label}: " if label != "custom" else "") + text,
                               args.load)
    if skipped:
        lines.append(f"not started (the time budget): {', '.join(skipped)}")
    lines += boots.shape_table(results, [label for label, _s, _t in guests])
    return lines


def cmd_boots(args: argparse.Namespace) -> int:
    """Boot one guest shape, or several in turns, N times each on one bed, optionally beside a
    host load and inside a time budget; count the deaths and say where each died."""
    if args.load and shutil.which(shlex.split(args.load)[0]) is None:
        raise BedError(f"--load: {shlex.split(args.load)[0]} is not installed (stress-ng: "
                       "apt-get install stress-ng)")
    guests, config, _settings = _boots_setup(args)
    results: list[boots.Boot] = []
    skipped: list[str] = []
    with XenBed(config) as bed:
        # Bed time starts with the lock (building the image and booting Dom0 count, waiting not).
        t_start = time.monotonic() - sum(seconds for _, seconds in bed.timings)
        load = _start_load(args.load)
        try:
            skipped = _boot_rounds(bed, guests, args, t_start, results)
        finally:
            _stop_load(load)
            lines = _boots_report(bed.run_dir.name, guests, args, results, skipped,
                                  (time.monotonic() - t_start) / 60)
            (bed.run_dir / "boots.txt").write_text("\n".join(lines) + "\n")
            print("\n".join(lines), flush=True)
    return 1 if any(b.outcome != "ok" for b in results) or skipped else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Boot the bed and keep it up; ``exec`` sends it Dom0 scripts through a unix socket."""
    config = BedConfig(host_numa2=args.host_numa2, with_agent=not args.no_agent, run_name="serve",
                       guest_debs=args.debs)
    path = Path(args.socket)
    if path.exists():
        path.unlink()
    with XenBed(config) as bed, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen(1)
        log(f"serving Dom0 on {path}; stop with Ctrl-C")
        while True:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while not data.endswith(b"\0"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                req = json.loads(data.rstrip(b"\0").decode())
                try:
                    out, rc = bed.dom0(req["script"], timeout=float(req.get("timeout", 300)))
                except BedError as e:
                    out, rc = f"e2e: {e}\n", 255
                conn.sendall(json.dumps({"out": out, "rc": rc}).encode())


def cmd_exec(args: argparse.Namespace) -> int:
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    script = command[0] if len(command) == 1 else shlex.join(command)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(args.socket)
        s.sendall(json.dumps({"script": script, "timeout": args.timeout}).encode() + b"\0")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    ans = json.loads(data.decode())
    sys.stdout.write(ans["out"])
    return int(ans["rc"])


def cmd_build(args: argparse.Namespace) -> int:
    preflight.check(guest_debs=args.debs)
    lock = acquire_bed_lock()  # noqa: F841 (held until exit: one builder at a time)
    stage, xen, _kernel, dom0, disk = XenBed(BedConfig(with_agent=not args.no_agent)).prepare()
    extra = [rootfs.guest_image_debs(artefacts.modules_dir(stage))] if args.debs else []
    for p in (xen, dom0, disk, *extra):
        print(p)
    return 0


def cmd_pins(_args: argparse.Namespace) -> int:
    stale = 0
    pins = dict(versions.PACKAGES)
    pins.update({f"linux-image-{abi}": v for abi, v in versions.GUEST_KERNELS.values()})
    for name, pinned in sorted(pins.items()):
        out = subprocess.run(
            ["apt-cache", "policy", name], stdout=subprocess.PIPE, check=False
        ).stdout.decode()
        cand = next(
            (ln.split()[1] for ln in out.splitlines() if ln.strip().startswith("Candidate:")), "?"
        )
        mark = "" if cand == pinned else "   <- differs"
        if pinned not in artefacts.apt_known([name]).get(name, []):
            alt = pinning.choose_fallback(name, pinned, artefacts.apt_candidates(name))
            mark += f"; pin gone from apt: the bed would take {'='.join(alt) if alt else 'nothing'}"
        stale += bool(mark)
        print(f"{name:40} {pinned:40} {cand}{mark}")
    return 1 if stale else 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # Cleanup (killing our QEMU) must run on SIGTERM too, and on SIGINT even when a shell started
    # us in the background with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    parser = argparse.ArgumentParser(prog="python -m tests.e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run", help="boot the bed and run one command in a guest or in Dom0")
    run.add_argument("--vnuma", help="xl.cfg vnuma list for an HVM guest")
    run.add_argument("--memory", type=int, default=1024, help="guest MiB (== maxmem)")
    run.add_argument("--vcpus", type=int, default=4)
    run.add_argument("--pv", action="store_true", help="a PV guest (no vNUMA)")
    run.add_argument("--dom0", action="store_true", help="run the command in Dom0")
    run.add_argument("--host-numa2", action="store_true",
                     help="2 host NUMA nodes, intel-iommu, a NIC behind a pxb-pcie on node 1")
    run.add_argument("--no-agent", action="store_true", help="guest image without the agent")
    run.add_argument("--debs", action="store_true",
                     help="guest image with the agent installed from its .deb and a NoCloud seed")
    run.add_argument("--systemd", action="store_true",
                     help="the guest boots systemd (the runner becomes e2e-runner.service)")
    run.add_argument("--kernel", default="",
                     help=f"guest kernel: {versions.DEFAULT_GUEST_KERNEL} (default, Dom0's) or one "
                     f"of {', '.join(sorted(versions.GUEST_KERNELS))}")
    run.add_argument("--no-pin-hvm", action="store_true",
                     help="leave an HVM guest's vCPUs on every pCPU (default: off pCPU 0, the "
                     "triple-fault workaround; tests/e2e/README.md)")
    run.add_argument("--timeout", type=float, default=300, help="seconds for the command")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)
    build = sub.add_parser("build", help="fetch and build all artefacts (cached)")
    build.add_argument("--no-agent", action="store_true")
    build.add_argument("--debs", action="store_true", help="also the image with the agent's .deb")
    build.set_defaults(func=cmd_build)
    serve = sub.add_parser("serve", help="boot the bed and keep it up for 'exec' (debugging)")
    serve.add_argument("--socket", default="/tmp/e2e-bed.sock")
    serve.add_argument("--host-numa2", action="store_true")
    serve.add_argument("--no-agent", action="store_true")
    serve.add_argument("--debs", action="store_true", help="the image with the agent's .deb")
    serve.set_defaults(func=cmd_serve)
    exe = sub.add_parser("exec", help="run a script in the Dom0 of a bed started by 'serve'")
    exe.add_argument("--socket", default="/tmp/e2e-bed.sock")
    exe.add_argument("--timeout", type=float, default=300)
    exe.add_argument("command", nargs=argparse.REMAINDER)
    exe.set_defaults(func=cmd_exec)
    bts = sub.add_parser("boots", help="boot one guest shape N times and count the deaths")
    bts.add_argument("n", type=int, help="how many boots (of each shape)")
    bts.add_argument("--shape", action="append", default=[], choices=sorted(boots.SHAPES),
                     help="a named guest shape (repeatable; the shapes boot in turns): "
                     + "; ".join(f"{k}: {v.why}" for k, v in boots.SHAPES.items())
                     + ". With --host-numa2 a shape's vnodes go to host nodes in turns (vnode i "
                     "on pnode i mod 2), except hvm-pt's, which are its own; hvm-pt without "
                     "--host-numa2 is refused before the bed starts (the layout is not turned on "
                     "for it: a run's host layout stays what the command line says). hvm-pt's "
                     "e1000e is made assignable before each boot, and a guest that does not list "
                     "it after the command counts as 'no device'")
    bts.add_argument("--max-minutes", type=float, default=0,
                     help="bed time budget: start no boot that would end after it (0: none)")
    bts.add_argument("--end-by", default="", metavar="HH:MM", type=boots.clock_time,
                     help="start no boot that would end after this time (UTC; the next such "
                     "time within 12 h, so 00:05 at 21:30 is tonight's), whatever "
                     "--max-minutes says")
    bts.add_argument("--boot-timeout", type=float, default=0,
                     help="seconds from xl create to the shell before a boot counts as a "
                     "timeout (times E2E_TIMEOUT_SCALE; default: HVM 1200, PV 600)")
    bts.add_argument("--vnuma", help="xl.cfg vnuma list for an HVM guest")
    bts.add_argument("--memory", type=int, help="guest MiB (== maxmem; default 1024)")
    bts.add_argument("--vcpus", type=int, help="default 4")
    bts.add_argument("--pv", action="store_true", help="a PV guest (no vNUMA)")
    bts.add_argument("--kernel", default="", help="guest kernel variant (as for run)")
    bts.add_argument("--host-numa2", action="store_true",
                     help="the 2-node layout (needed by hvm-pt)")
    bts.add_argument("--no-pin-hvm", action="store_true", help="leave HVM vCPUs on every pCPU")
    bts.add_argument("--load", default="",
                     help="a host command run beside the bed, e.g. 'stress-ng --cpu 2 --io 1'")
    bts.add_argument("--xl", action="append", default=[], metavar="LINE",
                     help="an extra xl.cfg line, e.g. 'tsc_mode=\"native\"' (repeatable)")
    bts.add_argument("--cmdline", default="", help="appended to the guest kernel's command line, "
                     "e.g. 'pci=noearly'")
    bts.add_argument("--outer-cpu", default="", help="the outer QEMU's -cpu model (default "
                     f"{BedConfig.outer_cpu})")
    bts.add_argument("--smp", type=int, default=4, help="the outer QEMU's -smp (Xen's pCPUs)")
    bts.add_argument("--command", default="guestagent topology --json",
                     help="run in each guest once it booted")
    bts.add_argument("--timeout", type=float, default=300, help="seconds for the command")
    bts.add_argument("--dom0-probe", default="", metavar="SCRIPT",
                     help="a Dom0 script run after each guest's command ({domid}: the guest's), "
                     "kept in <guest>.probe, e.g. 'xl debug-keys s; xl dmesg | grep dom{domid}:'")
    bts.add_argument("--xen-cmdline", default="", metavar="OPTIONS",
                     help="appended to Xen's command line, e.g. 'sched=credit'")
    bts.add_argument("--xen-keys", default="", metavar="KEYS",
                     help="Xen debug keys typed on Xen's serial console for a guest that "
                     "reached no shell, before --hang-probe; they need no Dom0 (e.g. 'q0r': "
                     "domains and vCPUs, Dom0's registers, run queues); kept in <guest>.xenkeys")
    bts.add_argument("--hang-probe", default="", metavar="SCRIPT",
                     help="a Dom0 script run on a guest that did not boot, before it is destroyed "
                     "({domid}: the guest's), kept in <guest>.hang, e.g. 'xl dmesg -c >/dev/null; "
                     "xl debug-keys q; xl debug-keys e; xl dmesg'")
    bts.set_defaults(func=cmd_boots)
    pins = sub.add_parser("pins", help="compare the pinned versions with apt's candidates")
    pins.set_defaults(func=cmd_pins)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BedError as e:
        print(f"e2e: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        # SIGTERM or Ctrl-C: the bed is already torn down and any report written (the context
        # managers and finally blocks ran on the way out); one line, not a traceback.
        print(f"e2e: {args.what} interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
