"""The blog's tasks: the guide's spam filter, with a word list standing in for Akismet."""

from minitask import task

SPAM_WORDS = ("viagra", "casino", "lottery")


@task()
def spam_filter(comment_id, comment, remote_addr=None, **kwargs):
    logger = spam_filter.get_logger(**kwargs)
    logger.info("Running spam filter for comment %s" % comment_id)
    return any(word in comment.lower() for word in SPAM_WORDS)
