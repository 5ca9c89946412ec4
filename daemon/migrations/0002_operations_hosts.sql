-- Operations are rows, not memory: a restarted daemon picks them up.
CREATE TABLE operations (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    -- Client-chosen, unique per account: a retried call finds its operation.
    request_id      TEXT,
    kind            TEXT NOT NULL,
    -- running, succeeded, failed, cancelled
    state           TEXT NOT NULL,
    phase           TEXT NOT NULL DEFAULT '',
    image_id        TEXT,
    host            TEXT NOT NULL DEFAULT '',
    bytes_done      BIGINT NOT NULL DEFAULT 0,
    bytes_total     BIGINT NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT '',
    error_code      INTEGER NOT NULL DEFAULT 0,
    -- Result message, JSON.
    result          TEXT NOT NULL DEFAULT '',
    created_unix    BIGINT NOT NULL,
    updated_unix    BIGINT NOT NULL,
    finished_unix   BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX operations_by_request ON operations (account_id, request_id);
CREATE INDEX operations_by_state ON operations (state, host);

CREATE TABLE hosts (
    name                 TEXT PRIMARY KEY,
    agent_endpoint       TEXT NOT NULL,
    libvirt_uri          TEXT NOT NULL DEFAULT '',
    version              TEXT NOT NULL DEFAULT '',
    cpus                 INTEGER NOT NULL DEFAULT 0,
    memory_bytes         BIGINT NOT NULL DEFAULT 0,
    site                 TEXT NOT NULL DEFAULT '',
    registered_unix      BIGINT NOT NULL,
    last_heartbeat_unix  BIGINT NOT NULL
);
