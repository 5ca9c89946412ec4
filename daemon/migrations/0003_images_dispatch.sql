-- What dispatch to agents and the image API need.

-- Filled when the capture succeeds (from the agent's result) and by the
-- usage accounting that runs after images are added or deleted.
ALTER TABLE images ADD COLUMN config_json TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN disks_json TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN exclusive_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN referenced_bytes BIGINT NOT NULL DEFAULT 0;

-- The request as sent to the agent (protobuf, hex), so a daemon restarted
-- before the agent acknowledged it can send it again (the agent is
-- idempotent on the operation id).
ALTER TABLE operations ADD COLUMN agent_request TEXT NOT NULL DEFAULT '';
-- The guest a capture reads (libvirt UUID) or a deploy creates (name).
ALTER TABLE operations ADD COLUMN guest TEXT NOT NULL DEFAULT '';
ALTER TABLE operations ADD COLUMN rate_bps DOUBLE PRECISION NOT NULL DEFAULT 0;
-- At most one running capture per guest.
CREATE UNIQUE INDEX operations_one_capture_per_guest ON operations (host, guest)
    WHERE kind = 'capture' AND state = 'running';
CREATE INDEX operations_by_account ON operations (account_id, created_unix, id);
CREATE INDEX operations_by_image ON operations (image_id, state);

-- Hosts an account may capture from and deploy to; host '*' means every
-- host. Admin accounts may use every host.
CREATE TABLE account_hosts (
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    host        TEXT NOT NULL,
    PRIMARY KEY (account_id, host)
);
