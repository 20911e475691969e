#!/bin/sh
# Entry point of the touchpoint image: `docker run IMAGE SUBCOMMAND [OPTIONS]`.
#
# Secrets as files: for every TOUCHPOINT_<NAME>_FILE variable (e.g. a compose or Docker
# secret, TOUCHPOINT_CLICKHOUSE_PASSWORD_FILE=/run/secrets/clickhouse_password), the
# file's content becomes TOUCHPOINT_<NAME>, so no secret has to sit in the environment of
# the compose file. Setting both TOUCHPOINT_<NAME> and TOUCHPOINT_<NAME>_FILE is an error.
set -eu

for assignment in $(env | grep -o '^TOUCHPOINT_[A-Z0-9_]*_FILE=' || true); do
    file_var="${assignment%=}"
    var="${file_var%_FILE}"
    eval "path=\${$file_var}"
    eval "already=\${$var+set}"
    if [ -n "$already" ]; then
        echo "touchpoint-entrypoint: both $var and $file_var are set; set one" >&2
        exit 1
    fi
    if [ ! -r "$path" ]; then
        echo "touchpoint-entrypoint: $file_var: cannot read $path" >&2
        exit 1
    fi
    value="$(cat "$path")"
    export "$var=$value"
    unset "$file_var"
done

exec touchpoint "$@"
