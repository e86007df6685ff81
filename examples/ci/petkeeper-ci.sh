#!/bin/sh
# Petkeeper in CI: the one script the GitHub Actions workflow, the .gitlab-ci.yml and the
# Jenkinsfile of examples/ci/ call, so that the behaviour is the same (and tested once).
#
#   petkeeper-ci.sh preview   check the pull request's checkout against the hosts, in check
#                             mode, and compare with the base commit's reports; exit 2 when
#                             it introduces changes (PETKEEPER_FAIL_ON), 1 on an error
#   petkeeper-ci.sh wait      after merge, when the pets' own agents apply: wait until
#                             every host's report checked the merged commit (petkeeper fleet
#                             --wait-for); exit 0 all clean, 2 drift left (e.g. a plan
#                             waiting for an approval), 1 a host failed or the timeout passed
#   petkeeper-ci.sh run       after merge, on a self-hosted runner with persistent state:
#                             petkeeper run (applies what policy and approvals allow)
#
# From the CI system's secrets and variables:
#   PETKEEPER_SSH_KEY, or PETKEEPER_SSH_KEY_FILE        the key that reaches the hosts
#   PETKEEPER_KNOWN_HOSTS, or PETKEEPER_KNOWN_HOSTS_FILE the hosts' keys (never skip checking)
#   PETKEEPER_VAULT_PASSWORD_FILE   the vault password, from a secret file (never a variable)
#   PETKEEPER_INVENTORY   the inventory in the repository (default inventory/hosts.yml)
#   PETKEEPER_LIMIT       the hosts to check (default: every host of the inventory)
#   PETKEEPER_BASE        the base commit (default: what the CI system says, else origin/main)
#   PETKEEPER_REPORTS_URL where the agents push their reports (default: the checkout's origin)
#   PETKEEPER_FAIL_ON     introduced (default) or drift
#   PETKEEPER_TREE        the checkout (default .)
#   PETKEEPER_COMMIT      for wait: the merged commit (default: what the CI system says)
#   PETKEEPER_REPO        for wait: the GitOps repo's URL (default: the checkout's origin)
#   PETKEEPER_BRANCH      for wait: its branch (default: what the CI system says, else main)
#   PETKEEPER_TIMEOUT     for wait: how long (default 30m)
#   PETKEEPER_CONFIG, PETKEEPER_STATE_DIR   for run: the agent.yml and persistent state
#   PETKEEPER             the petkeeper command (default petkeeper)
set -eu

mode=${1:-preview}
pk=${PETKEEPER:-petkeeper}
secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT
trap 'exit 130' INT TERM
chmod 700 "$secrets"

ssh_options() {
    if [ -n "${PETKEEPER_SSH_KEY:-}" ]; then
        (umask 077 && printf '%s\n' "$PETKEEPER_SSH_KEY" > "$secrets/key")
        PETKEEPER_SSH_KEY_FILE=$secrets/key
    fi
    if [ -n "${PETKEEPER_KNOWN_HOSTS:-}" ]; then
        printf '%s\n' "$PETKEEPER_KNOWN_HOSTS" > "$secrets/known_hosts"
        PETKEEPER_KNOWN_HOSTS_FILE=$secrets/known_hosts
    fi
    if [ -z "${PETKEEPER_KNOWN_HOSTS_FILE:-}" ]; then
        echo "petkeeper-ci.sh: error: PETKEEPER_KNOWN_HOSTS is not set; give the hosts' keys" \
             "from the CI system's secrets (ssh-keyscan them once, from a trusted network)" >&2
        exit 1
    fi
    set -- --known-hosts "$PETKEEPER_KNOWN_HOSTS_FILE"
    if [ -n "${PETKEEPER_SSH_KEY_FILE:-}" ]; then
        set -- "$@" --private-key "$PETKEEPER_SSH_KEY_FILE"
    fi
    if [ -n "${PETKEEPER_VAULT_PASSWORD_FILE:-}" ]; then
        set -- "$@" --vault-password-file "$PETKEEPER_VAULT_PASSWORD_FILE"
    fi
    printf '%s\n' "$@"
}

case $mode in
preview)
    # What each CI system calls the base commit and where it shows reports.
    if [ "${GITHUB_ACTIONS:-}" = true ]; then
        base=${PETKEEPER_BASE:-origin/${GITHUB_BASE_REF:-main}}
        out=${RUNNER_TEMP:-.}
        set -- --github --junit "$out/petkeeper-junit.xml" --markdown "$out/petkeeper-preview.md"
    elif [ -n "${GITLAB_CI:-}" ]; then
        base=${PETKEEPER_BASE:-${CI_MERGE_REQUEST_DIFF_BASE_SHA:-origin/${CI_DEFAULT_BRANCH:-main}}}
        out=${CI_PROJECT_DIR:-.}
        set -- --gitlab-codequality "$out/gl-code-quality-report.json" \
               --junit "$out/petkeeper-junit.xml" --markdown "$out/petkeeper-preview.md"
    elif [ -n "${JENKINS_URL:-}" ]; then
        base=${PETKEEPER_BASE:-origin/${CHANGE_TARGET:-main}}
        out=${WORKSPACE:-.}
        set -- --junit "$out/petkeeper-junit.xml" --markdown "$out/petkeeper-preview.md"
    else
        base=${PETKEEPER_BASE:-origin/main}
        set -- --junit petkeeper-junit.xml --markdown petkeeper-preview.md
    fi
    ssh=$(ssh_options)
    # shellcheck disable=SC2086 # $ssh: option words without spaces (paths from mktemp or the CI)
    exec "$pk" preview --tree "${PETKEEPER_TREE:-.}" --base "$base" \
        --inventory "${PETKEEPER_INVENTORY:-inventory/hosts.yml}" \
        ${PETKEEPER_LIMIT:+--limit "$PETKEEPER_LIMIT"} \
        ${PETKEEPER_REPORTS_URL:+--reports-url "$PETKEEPER_REPORTS_URL"} \
        --fail-on "${PETKEEPER_FAIL_ON:-introduced}" $ssh "$@"
    ;;
wait)
    # What each CI system calls the merged commit and its branch.
    commit=${PETKEEPER_COMMIT:-${GITHUB_SHA:-${CI_COMMIT_SHA:-${GIT_COMMIT:-head}}}}
    branch=${PETKEEPER_BRANCH:-${GITHUB_REF_NAME:-${CI_COMMIT_BRANCH:-${BRANCH_NAME:-main}}}}
    repo=${PETKEEPER_REPO:-$(git -C "${PETKEEPER_TREE:-.}" remote get-url origin)}
    inventory=${PETKEEPER_TREE:-.}/${PETKEEPER_INVENTORY:-inventory/hosts.yml}
    set --
    if [ -e "$inventory" ]; then  # its hosts with no report yet are waited for too
        set -- --inventory "$inventory"
    fi
    exec "$pk" fleet --repo "$repo" --branch "$branch" \
        ${PETKEEPER_REPORTS_URL:+--reports-url "$PETKEEPER_REPORTS_URL"} \
        --wait-for "$commit" --timeout "${PETKEEPER_TIMEOUT:-30m}" "$@"
    ;;
run)
    : "${PETKEEPER_CONFIG:?set PETKEEPER_CONFIG to the agent.yml of this runner}"
    : "${PETKEEPER_STATE_DIR:?set PETKEEPER_STATE_DIR to a persistent folder of this runner}"
    exec "$pk" --config "$PETKEEPER_CONFIG" run --state-dir "$PETKEEPER_STATE_DIR" \
        ${PETKEEPER_TAKE_OVER:+--take-over}
    ;;
*)
    echo "petkeeper-ci.sh: error: unknown mode '$mode'; use preview, wait or run" >&2
    exit 1
    ;;
esac
