-- Sites: named stores (datacenters). Hosts name their site when they
-- register (hosts.site; '' is the site 'default'); an image may be stored
-- at several sites, one row per copy.
CREATE TABLE sites (
    name          TEXT PRIMARY KEY,
    store         TEXT NOT NULL,
    created_unix  BIGINT NOT NULL
);
CREATE TABLE image_locations (
    image_id      TEXT NOT NULL REFERENCES images (id),
    site          TEXT NOT NULL,
    -- 'copying' while a CopyImage runs, then 'available'.
    state         TEXT NOT NULL,
    -- The copy operation that made it ('' for captures and imports).
    operation_id  TEXT NOT NULL DEFAULT '',
    updated_unix  BIGINT NOT NULL,
    PRIMARY KEY (image_id, site)
);
-- Every image so far lives in the one store there was: site 'default'.
INSERT INTO image_locations (image_id, site, state, updated_unix)
    SELECT id, 'default', 'available', updated_unix FROM images
    WHERE state IN ('active', 'deprecated');
