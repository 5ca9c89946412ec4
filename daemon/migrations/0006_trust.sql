-- Host credentials: an agent registers and heartbeats with its host's
-- token (`imprintd host add NAME` prints it once; only the hash is kept),
-- or with a TLS certificate whose subjectAltName is the host name.
CREATE TABLE host_credentials (
    host          TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_unix  BIGINT NOT NULL
);
-- Guests belong to accounts: the account that deployed them through
-- imprint, or the one an admin assigned them to. Only the owner (or an
-- admin) may capture a guest. Keyed by the libvirt UUID, which stays when
-- a guest is renamed and is never reused for another guest.
CREATE TABLE guest_owners (
    host           TEXT NOT NULL,
    guest_uuid     TEXT NOT NULL,
    guest_name     TEXT NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    assigned_unix  BIGINT NOT NULL,
    PRIMARY KEY (host, guest_uuid)
);
CREATE INDEX guest_owners_by_account ON guest_owners (account_id);
-- Stored data of an image that failed its check when a deploy or export
-- read it ('' when none was found): shown on the image until a later full
-- read (deploy or export) finds it whole again.
ALTER TABLE images ADD COLUMN damage TEXT NOT NULL DEFAULT '';
