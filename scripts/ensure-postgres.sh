#!/usr/bin/env bash
# Makes the machine's Postgres server ready for `make test` and `make dev`:
# starts the cluster if it is down and creates the `callchain` role (password
# login over TCP, allowed to create the throwaway test databases) and the
# `callchain` database. Safe to run again.
set -euo pipefail

PG_ROLE=${PG_ROLE:-callchain}
PG_PASSWORD=${PG_PASSWORD:-callchain}
PG_DATABASE=${PG_DATABASE:-callchain}

if [ -n "${CALLCHAIN_SKIP_PG_SETUP:-}" ]; then
    exit 0
fi

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    echo "Postgres is not installed. On Debian: apt-get install -y postgresql" >&2
    exit 1
fi

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres "$@"
    fi
}

cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2" "$4}')
if [ -z "$cluster" ]; then
    echo "No Postgres cluster exists. Create one: pg_createcluster --start 15 main" >&2
    exit 1
fi
read -r version name status <<<"$cluster"
if [ "$status" != "online" ]; then
    echo "starting Postgres $version/$name"
    pg_ctlcluster "$version" "$name" start
fi

for _ in $(seq 1 50); do
    as_postgres psql -qAtc 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
done

as_postgres psql -v ON_ERROR_STOP=1 -qAt <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${PG_ROLE}') THEN
        CREATE ROLE ${PG_ROLE} LOGIN CREATEDB PASSWORD '${PG_PASSWORD}';
    END IF;
END
\$\$;
SQL
if ! as_postgres psql -qAtc "select 1 from pg_database where datname = '${PG_DATABASE}'" | grep -q 1; then
    as_postgres createdb -O "${PG_ROLE}" "${PG_DATABASE}"
fi
port=$(as_postgres psql -qAtc 'show port')
echo "Postgres ready: postgres://${PG_ROLE}:***@127.0.0.1:${port}/${PG_DATABASE}"
