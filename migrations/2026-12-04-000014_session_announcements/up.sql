-- Every server keeps recently authenticated sessions for a moment (AGENTRY_SESSION_CACHE_MS).
-- The application announces its own revocations; these triggers announce every other change
-- to a user or a session, however it is made (an operator's SQL included), on the channel the
-- servers already LISTEN to. NOTIFY is delivered at commit, so nothing is announced early.

CREATE FUNCTION agentry_announce_user_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('agentry_revoke', OLD.id::text || ':changed');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER users_announce_change
    AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION agentry_announce_user_change();

CREATE FUNCTION agentry_announce_session_end() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('agentry_revoke', OLD.id::text || ':session');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER sessions_announce_end
    AFTER UPDATE OF revoked_at, expires_at, user_id OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION agentry_announce_session_end();
