"""Every default that matters, named once.

Times are seconds. Each can be overridden where the process that uses it is
configured (the CP's and the agent's settings in `config`, or the environment).
"""

CP_URL = "http://localhost:8080"
CP_HOST = "0.0.0.0"
CP_PORT = 8080
CP_THREADS = 80  # long-polls, event streams and log streams each hold a thread while they wait
# The CP's GIL switch interval (sys.setswitchinterval; Python's own is 0.005 s): the most
# a thread back from a socket or SQLite call waits while another computes. Measured with
# benchmarks/agents_load.py at 1,000 agents (docs/architecture.md).
GIL_SWITCH_INTERVAL = 0.001
# Threads long-polls may never take: users, heartbeats and reports always find one.
# At most half the threads (see CPConfig.long_poll_slots).
CP_POLL_RESERVE = 16
# Seconds the oldest request waiting in the server's queue may have waited for a thread
# before the CP answers 503: a backlog measured in time, not requests, so a burst of
# cheap ones (a thousand agents' task reports) is served, and a real backlog refused
# long before clients time out (HTTP_TIMEOUT).
CP_OVERLOAD_WAIT = 2.0
# Seconds a request may wait for a thread before the CP counts itself deaf: it may have
# missed heartbeats, so no node's silence counts from before then (Liveness.deaf_until).
CP_DEAF_WAIT = 1.0
# Slow clients. A client may keep the CP waiting CP_READ_TIMEOUT seconds in all for a
# request's headers and body, plus one more for every READ_RATE bytes of it (a large Git
# push on a slow link); one address may hold CP_READING_SHARE of the threads with
# requests still arriving.
CP_READ_TIMEOUT = 10.0
READ_RATE = 64 * 1024
CP_READING_SHARE = 0.25
CONTAINER_DATA_DIR = "/data"

GIT_BRANCH = "main"
APPS_DIR = "apps"
SPEC_SUFFIXES = (".yaml", ".yml")

HEARTBEAT_INTERVAL = 5.0
UNKNOWN_AFTER_BEATS = 3  # missed heartbeats before a node is unknown
OFFLINE_AFTER_BEATS = 6  # ... and offline (its slots move)

TASK_LEASE = 120.0  # an agent renews its lease while a long pull is running
TASK_MAX_ATTEMPTS = 3  # leases that expire this many times fail the task
LONG_POLL_WAIT = 20.0
LONG_POLL_MAX = 30.0

HEAL_DELAY = 30.0  # a dead container is restarted after this, or at once when its agent restarts
RECONCILE_INTERVAL = 2.0
EVENTS_KEPT = 10_000  # the event log keeps this many of the newest events
MAX_BODY = 4 * 1024 * 1024  # largest API request body
MAX_GIT_BODY = 64 * 1024 * 1024  # largest Git request body (a push's pack)
SYNC_WAIT = 10.0  # how long a write waits for its own commit to be synced before answering

# Spec files: bounds that keep one pushed file from costing minutes or gigabytes.
MAX_SPEC_BYTES = 256 * 1024  # one apps/*.yaml file
MAX_SPEC_EXPANDED = 1024 * 1024  # the same file once YAML aliases are expanded
MAX_APP_FILES = 2_000  # files under apps/ that one commit may hold

STOP_TIMEOUT = 10  # docker stop's grace period before SIGKILL
DOCKER_TIMEOUT = 60.0  # one Docker API call (a stop waits its grace period inside it)
# Tasks an agent runs at once, one at a time per container. Mostly threads waiting on
# Docker: a burst of N slow stops needs more than N of them not to hold up a deploy
# (benchmarks/head_of_line.py: 8 → 21 s behind 20 slow removals, 32 → 0.3 s).
AGENT_CONCURRENCY = 32
RETRY_MAX = 15.0  # agent backoff cap while the control plane or Docker does not answer

# Authentication. The bootstrap windows (first admin login, first agent without a
# join token) close at their first use, or this long after the CP's very first start:
# long enough for the seed's steps, short enough that a forgotten CP is not left open.
BOOTSTRAP_WINDOW = 15 * 60.0
AUTH_FAILURES = 10  # failed credentials per address per AUTH_FAILURE_PERIOD, then 429
AUTH_FAILURE_PERIOD = 60.0
TOKEN_TOUCH_EVERY = 60.0  # a token's last_used_at is written at most this often
AGENT_STATE_DIR = "/var/lib/docklet-agent"  # inside the agent's container, or as a service

RUN_WAIT = 120.0  # how long `docklet run` waits for the app to run
HTTP_TIMEOUT = 10.0

# Logs (both processes). text: one line a record for people; json: one object a
# line, with the context fields, for a log pipeline (docklet.common.logs).
LOG_FORMAT = "text"
# An X-Request-Id a caller sends is kept when it is this long at most and made of
# letters, digits and . _ : - (what UUIDs and tracing ids use); else the CP makes one.
REQUEST_ID_MAX = 128

# Event streams (GET /api/events as text/event-stream). Each holds a server thread, so
# at most EVENT_STREAMS are open at once, taken out of the long-polls' threads (the
# reserve stays whole); each ends after EVENT_STREAM_TIME (the client reconnects with
# Last-Event-ID) and says a comment line every EVENT_STREAM_KEEPALIVE, so proxies keep
# it open and a client that left is noticed.
EVENT_STREAMS = 8
EVENT_STREAM_TIME = 300.0
EVENT_STREAM_KEEPALIVE = 15.0

# GET /metrics needs a read token unless the CP runs with --metrics-public.
METRICS_PUBLIC = False

# Upstream mode (--git-url): the CP's repository is a mirror of a branch on the team's
# own Git host. Without webhooks it fetches every GIT_POLL seconds (jittered), as Flux
# does; a token is sent over HTTPS as the password of GIT_USERNAME (GitHub's and Gitea's
# name for it; GitLab takes any). A fetch or push waits at most GIT_TIMEOUT on the host;
# a push that lost a race with another one is redone on the new head GIT_PUSH_RETRIES
# times. A webhook's body is at most WEBHOOK_MAX_BODY.
GIT_POLL = 60.0
GIT_USERNAME = "x-access-token"
GIT_TIMEOUT = 30.0
GIT_PUSH_RETRIES = 5
GIT_FORCE_PUSH = "refuse"  # or "follow": what a rewritten upstream history does
WEBHOOK_MAX_BODY = 1024 * 1024

# Secrets (`docklet secret set`): encrypted by the CP with AES-GCM under a 256-bit key kept
# in the data dir (0600) or given as DOCKLET_SECRET_KEY (base64). A value is bounded like
# an env value; a name is a DNS-label-like word that is also a safe file name.
SECRET_KEY_FILE = "secret.key"
SECRET_KEY_ENV = "DOCKLET_SECRET_KEY"
SECRET_VALUE_MAX = 64 * 1024  # bytes of one value
SECRET_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
SECRETS_MAX = 1000  # secrets in a cluster
SECRET_VERSIONS_KEPT = 10  # per secret, besides every version a revision refers to


# Dashboard sessions (docklet/cp/ui/session.py). A sign-in lasts UI_SESSION_TIME from
# then, whatever is done with it (absolute: a stolen cookie is worth hours, not for
# ever); each token holds at most UI_SESSIONS_PER_TOKEN (the oldest are dropped), and a
# sign-in's body is at most UI_SIGNIN_MAX_BODY bytes (a token is 48 characters).
UI_SESSION_TIME = 8 * 3600.0
UI_SESSIONS_PER_TOKEN = 20
UI_SIGNIN_MAX_BODY = 4096
# The log relay (`docklet logs`, docs/architecture.md "The log relay"). Each agent holds
# one channel open, which costs the CP no thread (one selector thread holds them all):
# at most AGENT_CHANNELS, each told a keepalive every CHANNEL_KEEPALIVE. A caller's log
# stream holds a server thread: at most LOG_STREAMS per CP (taken out of the long-polls'
# threads, like event streams) and LOG_STREAMS_PER_NODE on one node; each buffers at most
# LOG_BUFFER_LINES lines / LOG_BUFFER_BYTES (beyond, lines are dropped and counted), says
# a keepalive every LOG_KEEPALIVE without lines, notices a node that has not answered
# within LOG_ANSWER_WAIT, and ends after LOG_STREAM_MAX_TIME (the caller runs it again).
AGENT_CHANNELS = 4096
CHANNEL_KEEPALIVE = 20.0
# An upgraded channel carries the agent's log batches up (a JSON line each, at most the
# API's --max-body): a node sending more than CHANNEL_READ_BYTES or CHANNEL_READ_FRAMES in
# a second floods, and its channel is closed (its agent falls back to POSTs, reconnects).
# An honest agent sends at most 2 batches a second per stream, AGENT_LOG_STREAMS streams.
CHANNEL_READ_BYTES = 4 * MAX_BODY
CHANNEL_READ_FRAMES = 200
LOG_STREAMS = 16
LOG_STREAMS_PER_NODE = 4
LOG_BUFFER_LINES = 1_000
LOG_BUFFER_BYTES = 1024 * 1024
LOG_KEEPALIVE = 2.0
# A stream's lines are written to its caller at most every LOG_WRITE_EVERY (sooner when its
# buffer is half full), and the channels' thread reads at most every CHANNEL_TURN: each
# wake-up of a CP thread is a turn at the one GIL the API's threads share, and with 20
# busy streams one a batch was 800 a second (benchmarks/agents_load.py --log-streams).
LOG_WRITE_EVERY = 0.2
CHANNEL_TURN = 0.05
LOG_ANSWER_WAIT = 5.0
LOG_STREAM_MAX_TIME = 3600.0

# The log relay, agent side. An agent follows at most AGENT_LOG_STREAMS streams (and
# AGENT_LOG_CONTAINERS containers of one stream) at once; each holds at most
# AGENT_LOG_BUFFER_LINES lines / AGENT_LOG_BUFFER_BYTES for the CP (beyond, the oldest
# are dropped and counted), posts a line at once after a quiet while but at most a batch
# every LOG_BATCH_EVERY while lines keep coming (each batch costs the CP a request:
# at 0.1 s, 200 busy containers followed were 2,000 requests a second and the CP's
# heartbeats waited; benchmarks/agents_load.py), and an empty one every LOG_IDLE_BATCH
# (its answer tells whether the caller is still there), and ends after
# AGENT_LOG_STREAM_TIME (as the CP's LOG_STREAM_MAX_TIME).
# Its channel is read with AGENT_CHANNEL_TIMEOUT: three keepalives missed.
AGENT_LOG_STREAMS = 8
AGENT_LOG_STREAM_TIME = 3600.0
AGENT_LOG_CONTAINERS = 100
AGENT_LOG_BUFFER_LINES = 1_000
AGENT_LOG_BUFFER_BYTES = 1024 * 1024
LOG_BATCH_EVERY = 0.5
LOG_IDLE_BATCH = 2.0
AGENT_CHANNEL_TIMEOUT = 60.0
