-- Per image: the last lint's report (a LintReport message, hex; '' for
-- none, as `hardware`) and when it was made (0: never linted).
ALTER TABLE images ADD COLUMN lint TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN linted_unix BIGINT NOT NULL DEFAULT 0;
