"""``python smallsegments.py BYTES broker [ARGS...]``: the broker, with journal segments of BYTES.

The command line keeps the 64 MiB default; `BrokerConfig` takes any size. With segments of a
few dozen KiB the broker rotates and compacts every second or so under load, so the crash
suite can kill it in the middle of a compaction pass.
"""

import sys

from minitask import cli
from minitask.broker import main as broker_main


class _SmallSegments(broker_main.BrokerConfig):
    def __init__(self, *args, **kwargs):
        kwargs["segment_bytes"] = SEGMENT_BYTES
        super().__init__(*args, **kwargs)


if __name__ == "__main__":
    SEGMENT_BYTES = int(sys.argv[1])
    # The command line builds its config from the name it imported (`cli.BrokerConfig`):
    # replacing only the broker module's name changed nothing, and every broker started here
    # kept 64 MiB segments (the crash suite's asserts on rotation now catch that).
    cli.BrokerConfig = broker_main.BrokerConfig = _SmallSegments
    sys.exit(cli.main(sys.argv[2:]))
