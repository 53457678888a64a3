"""7. Routing: exchanges, routing keys and queues, direct and topic, via the QUEUES setting.

The guide's example: tasks that compress video, rotate and crop images, and update
recommendations, sent with routing keys to a topic exchange ``tasks``; three queues bound
with ``video.#``, ``image.#`` and ``misc.#``. In a topic exchange the routing key is words
split by dots; ``*`` in a binding key matches exactly one word and ``#`` zero or more. A
direct exchange (``feeds`` here) matches the whole key exactly.

The QUEUES setting declares these (this process declares them as it connects, so messages
sent before any worker starts wait in their queues). A worker consumes the queues given
with ``-Q``. Here nothing runs until the messages sit in their queues; then a "video box"
worker takes the video queue and an "image box" worker the others. Each task says which
box ran it (the MACHINE variable given to each worker).

Run it:  python examples/07_routing.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import os

from minitask import Task, task

QUEUES = {
    "video": {"exchange": "tasks", "exchange_type": "topic", "binding_key": "video.#"},
    "image": {"exchange": "tasks", "exchange_type": "topic", "binding_key": "image.#"},
    "lowpri": {"exchange": "tasks", "exchange_type": "topic", "binding_key": "misc.#"},
    "feeds": {"exchange": "feeds", "exchange_type": "direct", "binding_key": "feed.import"},
}


def _on(work):
    return "%s on %s" % (work, os.environ.get("MACHINE", "?"))


class RoutedTask(Task):
    abstract = True
    exchange = "tasks"


class CompressVideoTask(RoutedTask):
    def run(self, filename):
        return _on("compressed %s" % filename)


class ImageRotateTask(RoutedTask):
    def run(self, filename, degrees):
        return _on("rotated %s by %d" % (filename, degrees))


class ImageCropTask(RoutedTask):
    def run(self, filename, selection):
        return _on("cropped %s to %s" % (filename, selection))


class UpdateRecommendationsTask(RoutedTask):
    def run(self):
        return _on("updated recommendations")


@task(exchange="feeds", routing_key="feed.import")
def import_feed(url):
    return _on("imported %s" % url)


def main(cluster):
    results = [
        CompressVideoTask.apply_async(args=["movie.mp4"], routing_key="video.compress"),
        CompressVideoTask.apply_async(args=["film.mkv"], routing_key="video.hd.compress"),
        ImageRotateTask.apply_async(args=["cat.png", 360], routing_key="image.rotate"),
        ImageCropTask.apply_async(args=["cat.png", "0,0,10,10"], routing_key="image.crop"),
        UpdateRecommendationsTask.apply_async(routing_key="misc.recommend"),
        import_feed.delay("http://example.com/rss"),
    ]
    # No binding matches "audio.compress": without mandatory=True (see 08) it is dropped.
    CompressVideoTask.apply_async(args=["song.mp3"], routing_key="audio.compress")
    print("messages no queue would take, dropped by the broker: %d"
          % cluster.status()["broker"]["unroutable"])
    waiting = cluster.waiting("video", "image", "lowpri", "feeds")
    print("waiting before any worker runs: %s"
          % ", ".join("%s %d" % item for item in waiting.items()))
    cluster.start_worker(["-c", "1", "-Q", "video"], env={"MACHINE": "video box"},
                         settings={"QUEUES": QUEUES})
    cluster.start_worker(["-c", "2", "-Q", "image,lowpri,feeds"],
                         env={"MACHINE": "image box"}, settings={"QUEUES": QUEUES})
    for result in results:
        print(result.get(timeout=10))


if __name__ == "__main__":
    _run.example(__file__, worker=False, settings={"QUEUES": QUEUES})
