"""Celery 4/5 setting names: the minitask setting each one is, or why it has none.

Celery 4 renamed its settings to lower case (``broker_url``, ``task_routes``); a Django project
writes the same names upper case under the ``CELERY_`` namespace (``CELERY_BROKER_URL``,
``CELERY_TASK_ROUTES``); older projects still use Celery 3's names (``CELERYD_CONCURRENCY``,
``CELERYBEAT_SCHEDULE``, ``CELERY_ROUTES``). `celery_name` turns any of the three spellings
into Celery 4's name, and then:

- `MAPPED`: the minitask setting it is (the value is read and checked as that setting);
- `ACCEPTED`: a name that changes nothing here, silently, when its value is what minitask does
  anyway (a check on the value and the final settings), else one warning with the reason;
- `ADVICE`: every other Celery name gets one warning at start, with the minitask way.

Only names Celery documents count among the lower-case ones: a settings module's own helpers
(``import os``, ``def helper()``, ``timezone`` imported from datetime) are not settings.
"""

import difflib
import reprlib
import types

__all__ = ["MAPPED", "ACCEPTED", "ADVICE", "CELERY_NAMES", "OLD_NAMES", "celery_name",
           "advice_for", "classify", "warning"]

_repr = reprlib.Repr()          # a long value must not swamp the one-line warning
_repr.maxstring = _repr.maxother = 60

MAPPED = {
    "broker_url": "BROKER_URL",
    "imports": "IMPORTS",
    "include": "IMPORTS",       # "exact same semantics as imports": both lists are imported
    "accept_content": "ACCEPT_CONTENT",
    "task_serializer": "TASK_SERIALIZER",
    "task_default_rate_limit": "DEFAULT_RATE_LIMIT",
    "task_default_exchange": "DEFAULT_EXCHANGE",
    "task_default_exchange_type": "DEFAULT_EXCHANGE_TYPE",
    "task_default_queue": "DEFAULT_QUEUE",
    "task_default_routing_key": "DEFAULT_ROUTING_KEY",
    "task_queues": "QUEUES",
    "task_routes": "TASK_ROUTES",
    "result_expires": "RESULT_EXPIRES",
    "task_always_eager": "ALWAYS_EAGER",
    "task_acks_late": "TASK_ACKS_LATE",
    "task_time_limit": "TASK_TIME_LIMIT",
    "task_soft_time_limit": "TASK_SOFT_TIME_LIMIT",
    "worker_concurrency": "CONCURRENCY",
    "worker_prefetch_multiplier": "PREFETCH_MULTIPLIER",
    "worker_max_tasks_per_child": "MAX_TASKS_PER_CHILD",
    "worker_logfile": "LOGFILE",
    "beat_schedule": "BEAT_SCHEDULE",
    "timezone": "TIMEZONE",
}

RESULTS = "results live in the broker; there is no result backend to configure"
EVENTS = ("minitask has no event stream; the broker's status page and /metrics "
          "(python -m minitask broker --http) show the same")
SECURITY = ("messages are not signed; use BROKER_SECRET (an HMAC handshake) and minitasks:// "
            "(TLS) to keep others out")
PROCESS = "minitask does not manage its own process; use your service manager"
BEAT = "the beat runs inside a worker started with --beat; its state lives in the broker"
NO_PARENTS = "minitask does not record a task's parent; set priority= on the tasks"
RECONNECT = ("a lost connection is tried again for 5 s (minitask.transport.RECONNECT_SECONDS), a "
             "worker's forever with backoff")
QUEUE_TYPE = "queues are minitask's own (durable, with priorities 0..9)"


def _always(value, settings):
    return True


def _one_of(*allowed):
    return lambda value, settings: value in allowed


def _same_as(name):
    return lambda value, settings: value == settings[name]


def _utc_or_timezone(value, settings):
    return value is True or settings.get("TIMEZONE") != "UTC"


# name -> (is this value what minitask does anyway?, what minitask does)
ACCEPTED = {
    "enable_utc": (_utc_or_timezone,
                   "times in messages are always UTC; crontab schedules follow TIMEZONE "
                   "(\"UTC\" unless set; \"local\" is the machine's own time)"),
    "task_track_started": (_always, "always on: a task reports STARTED when it begins"),
    "beat_enable_remote_control": (_one_of(True), "the beat runs in a worker (--beat), which "
                                                  "always answers remote control"),
    "task_create_missing_queues": (_one_of(True), "a queue not in QUEUES is always declared "
                                                  "when a call is routed to it"),
    "task_store_errors_even_if_ignored": (_one_of(True), "failures are always stored, even "
                                                         "for ignore_result tasks"),
    "task_protocol": (_always, "minitask's message format is its own (see "
                               "minitask/message.py)"),
    "task_publish_retry": (_one_of(True), RECONNECT),
    "task_remote_tracebacks": (_one_of(True), "a failure's traceback always comes back "
                                              "(AsyncResult.traceback)"),
    "task_eager_propagates": (_one_of(False), "an eager call returns an EagerResult; its "
                                              "get() raises the task's exception"),
    "task_ignore_result": (_one_of(False), "set ignore_result=True on the tasks that need it"),
    "task_default_priority": (_one_of(None), "set priority= on the tasks (0..9, 0 is the "
                                             "highest in minitask)"),
    "task_default_delivery_mode": (_one_of(2, "persistent"), "task messages are always "
                                                             "persistent"),
    "task_queue_max_priority": (_always, "every queue has priorities 0..9 (0 first)"),
    "task_acks_on_failure_or_timeout": (_one_of(True), "an acks_late task that fails or "
                                                       "times out is always acked"),
    "task_acks_on_failure": (_one_of(True), "an acks_late task that fails is always acked"),
    "task_acks_on_timeout": (_one_of(True), "an acks_late task that times out is always "
                                            "acked"),
    "task_reject_on_worker_lost": (_one_of(True), "an acks_late task whose process dies "
                                                  "always goes back to its queue"),
    "task_default_queue_type": (_one_of("classic"), QUEUE_TYPE),
    "task_create_missing_queue_type": (_one_of("classic"), QUEUE_TYPE),
    # Celery's defaults, which are what minitask does: silent at those values only.
    "task_store_eager_result": (_one_of(False), "eager results are not stored; keep the "
                                                "EagerResult"),
    "worker_deduplicate_successful_tasks": (_one_of(False), "use acks_late only for "
                                                            "idempotent tasks"),
    "worker_cancel_long_running_tasks_on_connection_loss": (_one_of(False), "running tasks "
                                                            "carry on across a lost "
                                                            "connection"),
    "task_create_missing_queue_exchange_type": (_one_of(None, "", "direct"),
                                                "a missing queue is reached through the "
                                                "default exchange, by its own name"),
    "result_serializer": (_same_as("TASK_SERIALIZER"), "results are encoded like their "
                                                       "task's arguments (TASK_SERIALIZER)"),
    "result_accept_content": (_same_as("ACCEPT_CONTENT"), "results are read as ACCEPT_CONTENT "
                                                          "allows"),
    "result_persistent": (_one_of(True), "results are always kept in the broker's journal"),
    "result_extended": (_one_of(False), "results carry the task's name, retries and "
                                        "date_done (AsyncResult's .name, .retries, "
                                        ".date_done), nothing more"),
    "worker_pool": (_one_of("prefork"), "the pool is always processes (-c N)"),
    "worker_enable_remote_control": (_one_of(True), "control and inspect always work"),
    "worker_disable_rate_limits": (_one_of(False), "rate limits always apply; remove "
                                                   "rate_limit from the task instead"),
    "worker_send_task_events": (_one_of(False), EVENTS),
    "task_send_sent_event": (_one_of(False), EVENTS),
    "worker_direct": (_one_of(False), "workers have no queue of their own; route with "
                                      "TASK_ROUTES and -Q"),
    "worker_hijack_root_logger": (_one_of(True), "the worker sets up logging itself (-l, "
                                                 "-f) unless a setup_logging receiver is "
                                                 "connected, as in Celery: connect one"),
    "worker_redirect_stdouts": (_one_of(False), "a task's print() goes to the worker's "
                                                "stdout, not its log"),
    "worker_timer_precision": (_always, "countdowns start on time from a heap scheduler, "
                                        "to the millisecond"),
    "broker_connection_retry": (_one_of(True), RECONNECT),
    "broker_connection_retry_on_startup": (_one_of(True), "a worker retries connecting at "
                                                          "start, with backoff, forever"),
    "broker_pool_limit": (_always, "each thread has one connection"),
    "task_allow_error_cb_on_chord_header": (_one_of(False), "a chord's link_error goes to its "
                                                            "body, which fails when a header "
                                                            "task fails"),
    "result_chord_join_timeout": (_always, "no task polls for a chord: its header results are "
                                           "counted as they arrive"),
    "result_chord_retry_interval": (_always, "no task polls for a chord: its header results "
                                             "are counted as they arrive"),
}

# Celery names with no counterpart: the warning's advice (None: nothing to do instead).
ADVICE = {
    "task_annotations": "set the options on the tasks, or on a base class they share",
    "task_compression": "minitask does not compress messages",
    "task_publish_retry_policy": RECONNECT,
    "task_inherit_parent_priority": NO_PARENTS,
    "result_backend": RESULTS,
    "result_compression": RESULTS,
    "result_cache_max": RESULTS,
    "override_backends": RESULTS,
    "result_exchange": RESULTS,
    "result_exchange_type": RESULTS,
    "broker_read_url": "one broker: BROKER_URL",
    "broker_write_url": "one broker: BROKER_URL",
    "broker_transport": "the broker is minitask's own (BROKER_URL = minitask://HOST:PORT)",
    "broker_failover_strategy": "one broker: BROKER_URL",
    "broker_heartbeat": "heartbeats are fixed (a worker sends one after 5 s of silence)",
    "broker_heartbeat_checkrate": "heartbeats are fixed (a worker sends one after 5 s of silence)",
    "broker_use_ssl": "use minitasks:// in BROKER_URL, and BROKER_CA_FILE (on Redis: "
                      "rediss:// with its ssl_* URL options)",
    "broker_pool_acquire_timeout": "each thread has one connection",
    "broker_connection_timeout": "connecting gives up after 10 s",
    "broker_connection_max_retries": RECONNECT,
    "broker_login_method": "authentication is BROKER_SECRET's HMAC handshake",
    "broker_native_delayed_delivery_queue_type": "countdowns always wait in the broker",
    "broker_channel_error_retry": RECONNECT,
    "broker_transport_options": "the built-in broker takes its own command-line flags; on "
                                "Redis, BROKER_URL's options (heartbeat=, vhost=, the "
                                "Sentinel service name) say what these did, and no "
                                "visibility_timeout is needed",
    # The Redis guide's own, at the top level too ("the shortest value will be used").
    "visibility_timeout": "on Redis a live worker's tasks never come back, however long they "
                          "run; a dead worker's come back after BROKER_URL's heartbeat=",
    "worker_eta_task_limit": "countdowns wait in the broker, not in the worker",
    "worker_disable_prefetch": "set TASK_ACKS_LATE = True and PREFETCH_MULTIPLIER = 1",
    "worker_enable_prefetch_count_reduction": None,
    "worker_lost_wait": "the broker's --worker-lost-grace",
    "worker_max_memory_per_child": "use MAX_TASKS_PER_CHILD",
    "worker_state_db": "revoked ids are kept by the broker",
    "worker_proc_alive_timeout": None,
    "worker_detect_quorum_queues": QUEUE_TYPE,
    "worker_soft_shutdown_timeout": "SHUTDOWN_TIMEOUT is how long a warm shutdown waits",
    "worker_enable_soft_shutdown_on_idle": "SHUTDOWN_TIMEOUT is how long a warm shutdown "
                                           "waits",
    "worker_log_color": "the log format is fixed",
    "worker_log_format": "the log format is fixed",
    "worker_task_log_format": "the log format is fixed",
    "worker_redirect_stdouts_level": "a task's print() goes to the worker's stdout",
    "worker_pool_restarts": "pool processes are replaced when they die or reach "
                            "MAX_TASKS_PER_CHILD",
    "worker_pool_putlocks": None,
    "worker_autoscaler": "the pool has a fixed size (-c N)",
    "worker_consumer": None,
    "worker_timer": None,
    "worker_agent": None,
    "worker_pidfile": PROCESS,
    "worker_uid": PROCESS,
    "worker_gid": PROCESS,
    "worker_umask": PROCESS,
    "worker_executable": PROCESS,
    "beat_scheduler": BEAT + " (BEAT_SCHEDULE and periodic tasks)",
    "beat_schedule_filename": BEAT,
    "beat_sync_every": BEAT,
    "beat_max_loop_interval": BEAT,
    "beat_cron_starting_deadline": BEAT + "; a crontab time missed while no beat ran is sent "
                                          "once",
    "beat_logfile": BEAT,
    "beat_pidfile": BEAT,
    "beat_uid": BEAT,
    "beat_gid": BEAT,
    "beat_umask": BEAT,
    "beat_executable": BEAT,
    "events_logfile": EVENTS,
    "events_pidfile": EVENTS,
    "events_uid": EVENTS,
    "events_gid": EVENTS,
    "events_umask": EVENTS,
    "events_executable": EVENTS,
    "event_queue_ttl": EVENTS,
    "event_queue_expires": EVENTS,
    "event_queue_durable": EVENTS,
    "event_queue_exclusive": EVENTS,
    "event_queue_prefix": EVENTS,
    "event_exchange": EVENTS,
    "event_serializer": EVENTS,
    "control_queue_ttl": "control messages use the broker's own queues",
    "control_queue_expires": "control messages use the broker's own queues",
    "control_exchange": "control messages use the broker's own queues",
    "control_queue_durable": "control messages use the broker's own queues",
    "control_queue_exclusive": "control messages use the broker's own queues",
    "firestore_project": RESULTS,
    "security_key": SECURITY,
    "security_key_password": SECURITY,
    "security_certificate": SECURITY,
    "security_cert_store": SECURITY,
    "security_digest": SECURITY,
}

# Result-backend families: every name with one of these prefixes is about a result backend.
_RESULT_BACKEND_PREFIXES = (
    "result_backend_", "database_", "cache_backend", "mongodb_", "redis_", "cassandra_",
    "s3_", "azureblockblob_", "gcs_", "elasticsearch_", "couchbase_", "arangodb_",
    "cosmosdbsql_", "firestore_")

# The result-backend settings Celery 5 documents, one per line of its configuration page.
_RESULT_BACKEND_NAMES = """
result_backend_always_retry result_backend_max_sleep_between_retries_ms
result_backend_base_sleep_between_retries_ms result_backend_max_retries
result_backend_thread_safe result_backend_transport_options database_create_tables_at_setup
database_engine_options database_short_lived_sessions database_table_schemas
database_table_names database_engine_callback database_db_names cache_backend_options
cache_backend mongodb_backend_settings redis_backend_health_check_interval
redis_backend_use_ssl redis_backend_credential_provider redis_max_connections
redis_socket_connect_timeout redis_socket_timeout redis_retry_on_timeout
redis_socket_keepalive redis_client_name redis_db redis_host redis_port redis_username
redis_password cassandra_servers cassandra_secure_bundle_path cassandra_port
cassandra_keyspace cassandra_table cassandra_read_consistency cassandra_write_consistency
cassandra_entry_ttl cassandra_auth_provider cassandra_auth_kwargs cassandra_options
s3_access_key_id s3_secret_access_key s3_bucket s3_base_path s3_endpoint_url s3_region
azureblockblob_container_name azureblockblob_base_path azureblockblob_retry_initial_backoff_sec
azureblockblob_retry_increment_base azureblockblob_retry_max_attempts
azureblockblob_connection_timeout azureblockblob_read_timeout gcs_bucket gcs_project
gcs_ttl gcs_threadpool_maxsize
gcs_base_path elasticsearch_retry_on_timeout elasticsearch_max_retries elasticsearch_timeout
elasticsearch_save_meta_as_text couchbase_backend_settings arangodb_backend_settings
cosmosdbsql_database_name cosmosdbsql_collection_name cosmosdbsql_consistency_level
cosmosdbsql_max_retry_attempts cosmosdbsql_max_retry_wait_time
""".split()

CELERY_NAMES = frozenset(MAPPED) | frozenset(ACCEPTED) | frozenset(ADVICE) | frozenset(
    _RESULT_BACKEND_NAMES)

# Celery 3's upper-case names that are not simply "CELERY_" + the new name in capitals.
OLD_NAMES = {
    "BROKER_URL": "broker_url", "BROKER_TRANSPORT": "broker_transport",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "BROKER_CONNECTION_TIMEOUT": "broker_connection_timeout",
    "BROKER_CONNECTION_RETRY": "broker_connection_retry",
    "BROKER_CONNECTION_MAX_RETRIES": "broker_connection_max_retries",
    "BROKER_FAILOVER_STRATEGY": "broker_failover_strategy",
    "BROKER_HEARTBEAT": "broker_heartbeat", "BROKER_LOGIN_METHOD": "broker_login_method",
    "BROKER_POOL_ACQUIRE_TIMEOUT": "broker_pool_acquire_timeout",
    "BROKER_POOL_LIMIT": "broker_pool_limit", "BROKER_USE_SSL": "broker_use_ssl",
    "CELERYBEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "CELERYBEAT_SCHEDULE": "beat_schedule", "CELERYBEAT_SCHEDULER": "beat_scheduler",
    "CELERYBEAT_SCHEDULE_FILENAME": "beat_schedule_filename",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every",
    "CELERY_MAX_CACHED_RESULTS": "result_cache_max",
    "CELERY_MESSAGE_COMPRESSION": "result_compression",
    "CELERY_RESULT_DBURI": "result_backend",
    "CELERY_RESULT_ENGINE_OPTIONS": "database_engine_options",
    "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS": "database_short_lived_sessions",
    "CELERY_RESULT_DB_TABLE_NAMES": "database_db_names",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT": "task_acks_on_failure_or_timeout",
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_ANNOTATIONS": "task_annotations", "CELERY_COMPRESSION": "task_compression",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_CREATE_MISSING_QUEUE_TYPE": "task_create_missing_queue_type",
    "CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE": "task_create_missing_queue_exchange_type",
    "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_QUEUE_TYPE": "task_default_queue_type",
    "CELERY_DEFAULT_RATE_LIMIT": "task_default_rate_limit",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_EAGER_PROPAGATES": "task_eager_propagates",
    "CELERY_IGNORE_RESULT": "task_ignore_result", "CELERY_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_PUBLISH_RETRY_POLICY": "task_publish_retry_policy",
    "CELERY_QUEUES": "task_queues", "CELERY_ROUTES": "task_routes",
    "CELERY_SEND_SENT_EVENT": "task_send_sent_event",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERYD_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERYD_TIME_LIMIT": "task_time_limit",
    "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER": "task_allow_error_cb_on_chord_header",
    "CELERYD_AGENT": "worker_agent", "CELERYD_AUTOSCALER": "worker_autoscaler",
    "CELERYD_CONCURRENCY": "worker_concurrency", "CELERYD_CONSUMER": "worker_consumer",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERY_ENABLE_REMOTE_CONTROL": "worker_enable_remote_control",
    "CELERYD_HIJACK_ROOT_LOGGER": "worker_hijack_root_logger",
    "CELERYD_LOG_COLOR": "worker_log_color", "CELERYD_WORKER_LOST_WAIT": "worker_lost_wait",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_POOL": "worker_pool", "CELERYD_POOL_PUTLOCKS": "worker_pool_putlocks",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_ETA_TASK_LIMIT": "worker_eta_task_limit",
    "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION": "worker_enable_prefetch_count_reduction",
    "CELERYD_REDIRECT_STDOUTS": "worker_redirect_stdouts",
    "CELERYD_REDIRECT_STDOUTS_LEVEL": "worker_redirect_stdouts_level",
    "CELERY_SEND_EVENTS": "worker_send_task_events", "CELERYD_STATE_DB": "worker_state_db",
    "CELERYD_TIMER": "worker_timer", "CELERYD_TIMER_PRECISION": "worker_timer_precision",
    "CELERYD_DETECT_QUORUM_QUEUES": "worker_detect_quorum_queues",
    "CELERYD_LOG_FILE": "worker_logfile",
}


def celery_name(label):
    """Celery 4's lower-case name for `label` in any of its three spellings, or None."""
    if label in CELERY_NAMES:
        return label
    if label in OLD_NAMES:
        return OLD_NAMES[label]
    if label.startswith("CELERY_") and label[7:].lower() in CELERY_NAMES \
            and label[7:].isupper():
        return label[7:].lower()
    return None


def advice_for(name):
    """What to do instead of Celery setting `name` (None when there is nothing to do)."""
    if name in ADVICE:
        return ADVICE[name]
    if name in ACCEPTED:
        return ACCEPTED[name][1]
    if name.startswith(_RESULT_BACKEND_PREFIXES):
        return RESULTS
    return None


def classify(label, value, setting_of):
    """What a settings module's name `label` is: ``("setting", NAME)`` for a spelling of a
    minitask setting (`setting_of` maps them); ``("celery", name)`` for a Celery setting with
    no counterpart; ``("unknown", None)`` for an upper-case name that looks like a setting
    (CELERY..., MINITASK_...) but is none; ``(None, None)`` for anything else."""
    if not isinstance(label, str) or label.startswith("_"):
        return None, None
    name = setting_of.get(label)
    celery = None if name is not None else celery_name(label)
    if name is None and celery is not None:
        name = MAPPED.get(celery)
    if name is not None or celery is not None:
        # A module's lower-case names include its imports (`from datetime import timezone`):
        # a module or a class is never a setting's value.
        if label.islower() and isinstance(value, (types.ModuleType, type)):
            return None, None
        return ("setting", name) if name is not None else ("celery", celery)
    if label.isupper() and label.startswith(("CELERY", "MINITASK_")):
        return "unknown", None
    return None, None


# Where Redis's way differs from the built-in broker's: the advice when BROKER_URL is Redis.
ON_REDIS = {
    "broker_heartbeat": "BROKER_URL's heartbeat= says how long a silent worker counts as alive",
    "broker_heartbeat_checkrate": "BROKER_URL's heartbeat= says how long a silent worker "
                                  "counts as alive",
    "broker_connection_timeout": "BROKER_URL's socket_connect_timeout= (5 s by default)",
    "worker_lost_wait": "BROKER_URL's handover_grace=",
    "worker_send_task_events": "minitask has no event stream; its status page and /metrics "
                               "(python -m minitask status --http HOST:PORT) show the same",
}


def warning(label, celery, value, settings, spellings, on_redis=False):
    """The warning for a name `classify` found without effect here, naming it and the minitask
    way (a close spelling for a typo); None for a Celery setting whose value is what minitask
    does anyway (`settings`: the final values; `on_redis`: BROKER_URL is Redis's, whose
    way may differ)."""
    if celery in ACCEPTED:
        is_fine, reason = ACCEPTED[celery]
        if is_fine(value, settings):
            return None
        if on_redis and celery in ON_REDIS:
            reason = ON_REDIS[celery]
        return "%s=%s has no effect in minitask: %s" % (label, _repr.repr(value), reason)
    if celery is not None:
        advice = ON_REDIS[celery] if on_redis and celery in ON_REDIS else advice_for(celery)
        return "ignoring %s: minitask has no such setting%s" % (
            label, "; " + advice if advice else "")
    close = difflib.get_close_matches(label, spellings, n=1, cutoff=0.85)
    return "ignoring %s: there is no such setting%s" % (
        label, " (did you mean %s?)" % close[0] if close else "")
