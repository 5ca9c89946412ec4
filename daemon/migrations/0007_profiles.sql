-- Hardware profiles (flavors), admin-defined. The profile is kept as its
-- protobuf message (HardwareProfile), hex-encoded: one definition of its
-- fields, in proto/imprint/v1/agent.proto.
CREATE TABLE profiles (
    name          TEXT PRIMARY KEY,
    spec          TEXT NOT NULL,
    created_unix  BIGINT NOT NULL
);
-- Per image: recommended profiles (comma-separated names), minimums a
-- deploy must meet, and hardware applied when a deploy names no profile
-- (a HardwareProfile message, hex; '' for none).
ALTER TABLE images ADD COLUMN recommended_profiles TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN min_vcpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN min_memory_mib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN hardware TEXT NOT NULL DEFAULT '';
