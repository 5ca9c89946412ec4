-- Guests are deleted through the daemon (kind 'delete-guest', the guest
-- named by its libvirt UUID like a capture): at most one running capture
-- or delete per guest.
DROP INDEX operations_one_capture_per_guest;
CREATE UNIQUE INDEX operations_one_guest_change ON operations (host, guest)
    WHERE kind IN ('capture', 'delete-guest') AND state = 'running';
