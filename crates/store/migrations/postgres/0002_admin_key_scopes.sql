-- API keys get a scope (SPEC §3, §4): `admin` (every route, every scope), `introspect`
-- (`POST /oauth2/introspect`) or `revocations` (`GET /v1/revocations`). Keys made before
-- scopes existed could do everything, so they become `admin`; the default then goes, so an
-- insert that forgot the scope fails instead of making an all-powerful key.
ALTER TABLE admin_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin'
    CHECK (scope IN ('admin', 'introspect', 'revocations'));
ALTER TABLE admin_keys ALTER COLUMN scope DROP DEFAULT;
