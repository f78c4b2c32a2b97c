-- Login CSRF: `startOAuth` also returns a browser binding, kept by the frontend (e.g. in
-- sessionStorage) and sent back with `completeOAuth`. Only its SHA-256 is stored. A flow that
-- an attacker started in their own browser cannot be completed in a victim's: the victim's
-- browser does not hold the binding. Null for states created before this column existed.
ALTER TABLE oauth_states ADD COLUMN browser_binding_hash bytea;
