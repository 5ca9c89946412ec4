-- Per image: the least size of the first disk a deploy may give (0: the
-- captured size, which every deploy needs anyway).
ALTER TABLE images ADD COLUMN min_disk_bytes BIGINT NOT NULL DEFAULT 0;
