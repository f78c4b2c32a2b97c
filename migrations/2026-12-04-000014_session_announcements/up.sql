-- Every server keeps recently authenticated sessions for a moment (AGENTRY_SESSION_CACHE_MS)
-- and closes the WebSockets of ended sessions. These triggers announce every change to a user
-- or a session to all servers, however it is made (the application's or an operator's SQL), on
-- the channel the servers LISTEN to. NOTIFY is delivered at commit: nothing is announced early,
-- and nothing committed goes unannounced. (The server that made a change applies it at once
-- itself, before it answers.)
--   <id>:user     status, role or password changed, or the user is gone: every session of the
--                 user ends on every server (cached sessions forgotten, WebSockets closed)
--   <id>:changed  what a session shows changed (email, name): cached copies are forgotten
--   <id>:session  a session was revoked, shortened, moved or deleted
-- Sign-ins (last_login_at) and refresh-token rotation announce nothing.

CREATE FUNCTION agentry_announce_user_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE'
        OR OLD.status IS DISTINCT FROM NEW.status
        OR OLD.role IS DISTINCT FROM NEW.role
        OR OLD.password_hash IS DISTINCT FROM NEW.password_hash THEN
        PERFORM pg_notify('agentry_revoke', OLD.id::text || ':user');
    ELSIF OLD.email IS DISTINCT FROM NEW.email
        OR OLD.display_name IS DISTINCT FROM NEW.display_name
        OR OLD.suspended_reason IS DISTINCT FROM NEW.suspended_reason THEN
        PERFORM pg_notify('agentry_revoke', OLD.id::text || ':changed');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER users_announce_change
    AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION agentry_announce_user_change();

CREATE FUNCTION agentry_announce_session_end() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE'
        OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
        OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
        OR OLD.user_id IS DISTINCT FROM NEW.user_id THEN
        PERFORM pg_notify('agentry_revoke', OLD.id::text || ':session');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER sessions_announce_end
    AFTER UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION agentry_announce_session_end();
