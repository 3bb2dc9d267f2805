#!/usr/bin/env python3
"""nats-server's own CPU per message for the two ways of keeping the telemetry stream short.

  wq    a work-queue stream: the server removes each message when it is acked
  trim  a limits stream purged once a second below the consumer's ack floor (what the
        processors do, processor/src/consumer.rs `poll_and_trim`)

Each run starts a private nats-server (/usr/sbin/nats-server, or $NATS_SERVER) on a free port
with its own store, publishes N messages of 10 kB (a batch of about 500 readings), consumes and
acks them one by one, and prints the server's CPU seconds (utime + stime from /proc).

  python3 -m venv /tmp/natspy && /tmp/natspy/bin/pip install nats-py
  /tmp/natspy/bin/python tests/tools/stream_retention_ab.py wq 30000
  /tmp/natspy/bin/python tests/tools/stream_retention_ab.py trim 30000
"""
import asyncio, os, subprocess, sys, time, tempfile, socket, shutil
import nats
from nats.js.api import StreamConfig, RetentionPolicy, ConsumerConfig, AckPolicy, DiscardPolicy

N = int(sys.argv[2]) if len(sys.argv) > 2 else 40000
MODE = sys.argv[1] if len(sys.argv) > 1 else ""
if MODE not in ("wq", "trim"):
    sys.exit("usage: stream_retention_ab.py wq|trim [messages]")
SIZE = 10000

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split()
    return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")

async def main():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    d = tempfile.mkdtemp()
    srv = subprocess.Popen([os.environ.get("NATS_SERVER", "/usr/sbin/nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1)
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    ret = RetentionPolicy.WORK_QUEUE if MODE == "wq" else RetentionPolicy.LIMITS
    await js.add_stream(StreamConfig(name="S", subjects=["s.*"], retention=ret, max_bytes=8*1024**3, discard=DiscardPolicy.NEW))
    sub = await js.pull_subscribe("s.*", durable="c", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20000))
    payload = os.urandom(SIZE)
    c0 = cpu(srv.pid); t0 = time.time()
    done = 0
    async def producer():
        futs = []
        for i in range(N):
            futs.append(js.publish(f"s.{i%100}", payload))
            if len(futs) >= 64:
                await asyncio.gather(*futs); futs = []
        await asyncio.gather(*futs)
    async def trimmer():
        last = 0
        while True:
            await asyncio.sleep(1)
            info = await js.consumer_info("S", "c")
            floor = info.ack_floor.stream_seq
            if floor > last:
                await js.purge_stream("S", seq=floor + 1)
                last = floor
    async def consumer():
        nonlocal done
        while done < N:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except Exception:
                continue
            for m in msgs:
                await m.ack()
            done += len(msgs)
    tasks = [asyncio.create_task(producer()), asyncio.create_task(consumer())]
    tr = asyncio.create_task(trimmer()) if MODE == "trim" else None
    await asyncio.gather(*tasks)
    if tr:
        await asyncio.sleep(1.5); tr.cancel()
    else:
        await asyncio.sleep(1.5)
    c1 = cpu(srv.pid); t1 = time.time()
    info = await js.stream_info("S")
    print(f"{MODE}: {N} msgs of {SIZE} B, nats-server CPU {c1-c0:.2f} s = {(c1-c0)/N*1e6:.0f} us/msg, wall {t1-t0:.1f} s, left in stream {info.state.messages}")
    await nc.close(); srv.terminate(); srv.wait()
    shutil.rmtree(d, ignore_errors=True)

asyncio.run(main())
