-- Several daemons on one catalog: each running operation is driven
-- (followed, finished) by the one daemon holding its lease. A daemon renews
-- its leases every few seconds; when it dies they expire and another
-- daemon claims the operations.
ALTER TABLE operations ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE operations ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
CREATE INDEX operations_running_leases ON operations (state, lease_until);
