DROP TRIGGER sessions_announce_end ON sessions;
DROP FUNCTION agentry_announce_session_end();
DROP TRIGGER users_announce_change ON users;
DROP FUNCTION agentry_announce_user_change();
