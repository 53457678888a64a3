"""Error e-mails: a failed task mails ``ADMINS`` when ``SEND_TASK_ERROR_EMAILS`` is on.

Mail goes out from a background thread of the process that ran the task, so a slow or dead
mail server never delays the next task; a failure to send is logged (one line per failure)
and dropped. A task with ``disable_error_emails = True`` never mails.
"""

import logging
import queue
import smtplib
import socket
import threading
from email.message import EmailMessage
from ..config import get_settings

__all__ = ["failure_mailer", "compose", "Mailer"]

logger = logging.getLogger(__name__)

SUBJECT = "[minitask] Error: Task %(name)s (%(id)s): %(exc)s"
BODY = """\
Task %(name)s with id %(id)s raised exception:
%(exc)r

Task was called with args: %(args)s kwargs: %(kwargs)s.

The contents of the full traceback was:

%(traceback)s

--
Just to let you know,
minitask on %(hostname)s.
"""


def compose(settings, task, message, outcome, hostname):
    """The EmailMessage for one failure (separate so tests can read it)."""
    args, kwargs = message.shown_args()         # argsrepr and kwargsrepr hide secrets
    values = {"name": task.name, "id": message.id, "exc": outcome.result,
              "args": args, "kwargs": kwargs,
              "traceback": outcome.traceback or "", "hostname": hostname}
    mail = EmailMessage()
    mail["Subject"] = (SUBJECT % values).replace("\n", " ")[:250]
    mail["From"] = settings.SERVER_EMAIL
    mail["To"] = ", ".join(address for _name, address in settings.ADMINS)
    mail.set_content(BODY % values)
    return mail


class Mailer:
    """Sends queued mails one at a time from a daemon thread."""

    def __init__(self, settings, timeout=10.0):
        self.settings = settings
        self.timeout = timeout
        self.queue = queue.Queue(maxsize=1000)
        self.thread = threading.Thread(target=self._run, name="minitask-mailer", daemon=True)
        self.thread.start()

    def __call__(self, task, message, outcome):
        if getattr(task, "disable_error_emails", False):
            return
        mail = compose(self.settings, task, message, outcome, socket.gethostname())
        try:
            self.queue.put_nowait(mail)
        except queue.Full:
            logger.error("error e-mail for %s[%s] dropped: %d mails already waiting",
                         task.name, message.id, self.queue.qsize())

    def _run(self):
        while True:
            mail = self.queue.get()
            try:
                with smtplib.SMTP(self.settings.EMAIL_HOST, self.settings.EMAIL_PORT,
                                  timeout=self.timeout) as smtp:
                    smtp.send_message(mail)
            except (OSError, smtplib.SMTPException) as exc:
                logger.error("could not send the error e-mail %r to %s:%s: %s",
                             mail["Subject"], self.settings.EMAIL_HOST,
                             self.settings.EMAIL_PORT, exc)
            finally:
                self.queue.task_done()


def failure_mailer(settings=None):
    """A callable for failed tasks when error e-mails are on, else None."""
    if settings is None:
        settings = get_settings()
    if not settings.SEND_TASK_ERROR_EMAILS or not settings.ADMINS:
        return None
    return Mailer(settings)
