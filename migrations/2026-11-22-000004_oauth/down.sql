DROP TABLE oauth_accounts;
DROP TABLE oauth_states;
