# bench-connect: a tight TCP connect loop to HOST:PORT, for lab/bench's "window without a
# rule" check. Run in the app namespace while the proxy's NAT rules are switched: every
# attempt opens a new connection (the nat table is consulted only for a connection's first
# packet) and closes it at once with a reset (SO_LINGER 0: no TIME_WAIT, so the loop never
# runs out of local ports). With a DNAT rule for the port the node accepts; with none, the
# proxy itself answers with a reset: "refused".
#
#   python3 bench-connect.py HOST PORT [PAUSE_MS]
#
# Runs until SIGTERM/SIGINT, then prints one line:
#   connect attempts=N ok=N refused=N other=N windows=N longest_window_ms=X
#       total_window_ms=X rate_per_s=X
# A window is a run of consecutive refused attempts; its length runs from its first refused
# attempt to the next successful one (resolution: one attempt, see rate_per_s). other:
# timeouts (no answer within 0.5 s) and any other error; a second line lists when they
# began (epoch ms, the first 100).
import signal
import socket
import struct
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
pause = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
stop = False


def on_signal(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

linger = struct.pack("ii", 1, 0)
attempts = ok = refused = other = windows = 0
longest = total = 0.0
window_start = None
other_at = []
started = time.monotonic()
while not stop:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(0.5)
    t = time.monotonic()
    wall = time.time()
    attempts += 1
    try:
        s.connect((host, port))
        ok += 1
        if window_start is not None:
            length = t - window_start
            total += length
            longest = max(longest, length)
            window_start = None
    except ConnectionRefusedError:
        refused += 1
        if window_start is None:
            window_start = t
            windows += 1
    except OSError:  # a timeout (no answer within 0.5 s) or another error
        other += 1
        other_at.append(f"{wall * 1000:.0f}")
    finally:
        s.close()
    if pause:
        time.sleep(pause)
end = time.monotonic()
if window_start is not None:  # still refused at the end
    total += end - window_start
    longest = max(longest, end - window_start)
elapsed = end - started
print(
    f"connect attempts={attempts} ok={ok} refused={refused} other={other} windows={windows} "
    f"longest_window_ms={longest * 1000:.1f} total_window_ms={total * 1000:.1f} "
    f"rate_per_s={attempts / elapsed if elapsed else 0:.0f}",
    flush=True,
)
print("connect other_at_ms=" + ",".join(other_at[:100]), flush=True)
