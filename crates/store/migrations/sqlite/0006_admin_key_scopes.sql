-- API keys get a scope (SPEC §3, §4): `admin` (every route, every scope), `introspect`
-- (`POST /oauth2/introspect`) or `revocations` (`GET /v1/revocations`). Keys made before
-- scopes existed could do everything, so they become `admin`. Every insert names the scope;
-- the default only fills the existing rows (SQLite cannot add a NOT NULL column without one).
ALTER TABLE admin_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin'
    CHECK (scope IN ('admin', 'introspect', 'revocations'));
