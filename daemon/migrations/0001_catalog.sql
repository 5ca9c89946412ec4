-- The catalog: accounts, images, sharing. Portable SQL: the same
-- migration runs on SQLite (embedded default) and PostgreSQL. Flags are
-- INTEGER 0/1: sqlx's Any driver cannot decode SQLite booleans.

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    -- SHA-256 (hex) of the API token; the token itself is never stored.
    token_sha256  TEXT NOT NULL UNIQUE,
    can_publish   INTEGER NOT NULL DEFAULT 0,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_unix  BIGINT NOT NULL
);

CREATE TABLE images (
    id              TEXT PRIMARY KEY,
    owner_id        TEXT NOT NULL REFERENCES accounts (id),
    name            TEXT NOT NULL,
    notes           TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,
    visibility      TEXT NOT NULL,
    protected       INTEGER NOT NULL DEFAULT 0,
    failure_reason  TEXT NOT NULL DEFAULT '',
    source_host     TEXT NOT NULL DEFAULT '',
    source_guest    TEXT NOT NULL DEFAULT '',
    size_bytes      BIGINT NOT NULL DEFAULT 0,
    created_unix    BIGINT NOT NULL,
    updated_unix    BIGINT NOT NULL
);
CREATE INDEX images_by_created ON images (created_unix, id);
CREATE INDEX images_by_owner ON images (owner_id, created_unix, id);
CREATE INDEX images_by_name ON images (name, id);

CREATE TABLE image_tags (
    image_id  TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    tag       TEXT NOT NULL,
    PRIMARY KEY (image_id, tag)
);
CREATE INDEX image_tags_by_tag ON image_tags (tag, image_id);

CREATE TABLE image_members (
    image_id    TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    -- pending, accepted, rejected
    status      TEXT NOT NULL,
    PRIMARY KEY (image_id, account_id)
);
CREATE INDEX image_members_by_account ON image_members (account_id, status);
