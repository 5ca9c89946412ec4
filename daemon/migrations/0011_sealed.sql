-- Per image: stored generalized (captured with seal), so deploys skip
-- their own generalization.
ALTER TABLE images ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
