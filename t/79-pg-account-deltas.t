# PostgreSQL: accounts read without a lock, changed by deltas at the end.
#
# A claim, or a batch of creates, cancels and outcomes, made for the first
# time, reads its accounts without a lock and locks them only in its last
# round trip (their deltas, then the COMMIT); every transaction locks
# executions, keys, deliveries and routes before accounts.
#  1. one busy account, two workers: creates, completions, cancels,
#     credits and debits (these lock the account as read) at once; the
#     ledger is exact (verify, the balance is the credits less the debits
#     and the costs, nothing held) and PostgreSQL broke no deadlock;
#  2. the order of the locks: another transaction (psql, as another node)
#     locks an execution, then its account once a batch waits for that
#     execution: it gets the account at once (with the account locked
#     first, as before, both would wait; its lock wait ends at 500 ms,
#     before PostgreSQL looks for deadlocks).  A cancel (read unlocked)
#     and a retry of a delivery (locked as read);
#  3. what releases money or records an outcome decides nothing on the
#     account and is not checked again: an account whose use is over the
#     limit its operator lowered meanwhile gets its outcomes written at
#     once, while its creates are refused (no batch lost a race in
#     PostgreSQL's log), its use grows;
#  4. a create's hold is checked again: psql takes the balance while a
#     create that read it waits for the account; it is refused;
#  5. a cancel and an outcome wait for their account at their end (they
#     have written their executions), not as they read it;
#  6. the secret and the idempotency keys a batch inserts are inserted
#     once it holds the account: psql, holding it, inserts them at once;
#  7. an account's first webhook secret, made by another transaction
#     while a batch that read none waits for the account: the batch is
#     made again, and signs with the secret stored.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use MIME::Base64 ();
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $rc = MR::Receiver->new;
$rc->start;
my $RPORT = $rc->port;

my $http = <<"EOF";
modelroute_store %%STORE%%;
modelroute_sweep_interval 200ms;
modelroute_webhook_allow_private on;
modelroute_route sim /p/sim protocol=openai_chat;
modelroute_route held /p/held protocol=openai_chat timeout=60s;
modelroute_model m-sim per_request=0.01 routes=sim attempts=1;
modelroute_model m-wait per_request=0.01 routes=held attempts=1;
modelroute_model m-held per_request=0.04;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/sim { internal; modelroute_simulator; }
    location /p/held {
        internal;
        proxy_pass http://127.0.0.1:$RPORT/held;
        proxy_read_timeout 90s;
    }
}
EOF

my $t = MR::Test->new(store => 'postgres', http => $http, workers => 2,
    timeout => 30);
$t->start;

my $PGLOG = MR::Test::pg_cluster()->{dir} . '/log';

my $CHAT = chat_completion(content => 'ok' x 40);

sub pg_log_from {
    my ($off) = @_;
    open my $fh, '<', $PGLOG or return '';
    seek $fh, $off, 0;
    local $/;
    my $s = <$fh> // '';
    return $s;
}

# ------------------------------------ 1: one busy account, everything at once

{
    my $acc = $t->new_account(credit => '500.00');
    my $key = $acc->{key};
    my $org = $acc->{org};

    my @res = $t->parallel(8, sub {
        my ($i) = @_;
        my (@sim, @bad);
        my ($cr, $db, $cancelled) = (0, 0, 0);
        for my $k (1 .. 30) {
            my $what = ($i + $k) % 4;
            if ($what == 0) {
                my $r = $t->create_exec($key,
                    $t->exec_body(model => 'm-sim'));
                if ($r->{status} == 202) { push @sim, $r->{json}{id} }
                else { push @bad, "m-sim: $r->{status}" }
            } elsif ($what == 1) {
                my $r = $t->create_exec($key,
                    $t->exec_body(model => 'm-held'));
                if ($r->{status} != 202) {
                    push @bad, "m-held: $r->{status}";
                    next;
                }
                my $c = $t->req(POST => "/v1/executions/$r->{json}{id}/cancel",
                    auth($key));
                if ($c->{status} == 200
                    && ($c->{json}{status} // '') eq 'CANCELLED')
                {
                    $cancelled++;
                } else {
                    push @bad, "cancel: $c->{status} $c->{body}";
                }
            } elsif ($what == 2) {
                my $r = $t->admin(POST => "/accounts/$org/credit",
                    { amount => '0.25', reference => "c-$i-$k" });
                if ($r->{status} == 200) { $cr++ }
                else { push @bad, "credit: $r->{status} $r->{body}" }
            } else {
                my $r = $t->admin(POST => "/accounts/$org/debit",
                    { amount => '0.10' });
                if ($r->{status} == 200) { $db++ }
                else { push @bad, "debit: $r->{status} $r->{body}" }
            }
        }
        return { sim => \@sim, bad => \@bad, cr => $cr, db => $db,
            cancelled => $cancelled };
    }, timeout => 180);

    my (@sim, @bad);
    my ($cr, $db, $cancelled) = (0, 0, 0);
    for my $r (@res) {
        if (ref $r ne 'HASH' || $r->{died}) {
            push @bad, 'a client died: '
                . (ref $r eq 'HASH' ? $r->{died} // '?' : '?');
            next;
        }
        push @sim, @{ $r->{sim} };
        push @bad, @{ $r->{bad} };
        $cr += $r->{cr};
        $db += $r->{db};
        $cancelled += $r->{cancelled};
    }
    is(scalar @bad, 0, 'every create, cancel, credit and debit succeeded')
        or diag join "\n", @bad[0 .. ($#bad < 4 ? $#bad : 4)];
    is($cancelled, 60, 'the 60 m-held executions were CANCELLED');
    is($cr + $db, 120, '60 credits and 60 debits');

    my $e = $t->wait_terminal($key, \@sim, 90);
    is(scalar(grep { ($e->{$_}{status} // '') eq 'COMPLETED' } @sim), 60,
        'the 60 m-sim executions COMPLETED');

    my $v = $t->verify($org);
    ok($v->{ok}, 'verify ok') or diag explain $v;
    my $b = $t->balance($key);
    money_is($b->{held}, '0.00', 'nothing held');
    money_is($b->{balance},
        sprintf('%.2f', 500 + 0.25 * $cr - 0.10 * $db - 0.01 * 60),
        'balance: the credits less the debits and 0.01 per completion');
    unlike(pg_log_from(0), qr/deadlock detected/,
        'PostgreSQL broke no deadlock');
}

# ---------------------------------------------------- 2: the order of locks

# SQL: another session waits for a row of $table (it holds the row's
# tuple lock and waits for the transaction that has the row), and, if
# $at_end, it has written executions already (it waits at its end)
sub waits_for_row {
    my ($table, $at_end) = @_;
    return "EXISTS (SELECT 1 FROM pg_locks t JOIN pg_locks x "
        . "ON x.pid = t.pid AND x.locktype = 'transactionid' "
        . "AND NOT x.granted WHERE t.locktype = 'tuple' "
        . "AND t.relation = '$table'::regclass "
        . "AND t.pid <> pg_backend_pid()"
        . ($at_end ? " AND EXISTS (SELECT 1 FROM pg_locks r "
            . "WHERE r.pid = t.pid AND r.mode = 'RowExclusiveLock' "
            . "AND r.relation = 'mr_executions'::regclass)" : '')
        . ")";
}

# another transaction (psql, as another node would): $first, then it
# waits (10 s at most) until $waiting (waits_for_row()), then $then,
# then $end (COMMIT); what it printed, or the error, in the file $out.
# Its pid, once $first is done.
sub other_txn {
    my ($first, $waiting, $then, $out, $name, $end) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $end //= 'COMMIT';
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $got = eval {
            $t->psql("BEGIN; $first; "
                . "DO \$\$ BEGIN /* mr-t79-waits */ "
                . "FOR i IN 1 .. 200 LOOP EXIT WHEN $waiting; "
                . "PERFORM pg_sleep(0.05); END LOOP; "
                . "IF NOT $waiting THEN "
                . "RAISE EXCEPTION 'no batch waited so: %', "
                . "(SELECT string_agg(l.pid || ' ' || l.locktype || ' ' "
                . "|| coalesce(l.relation::regclass::text, '') || ' ' "
                . "|| l.mode || ' ' || l.granted, ', ') FROM pg_locks l "
                . "WHERE l.pid <> pg_backend_pid()); "
                . "END IF; END \$\$; $then; $end");
        };
        open my $fh, '>', $out or POSIX::_exit(1);
        print $fh defined $got ? $got : "error: $@";
        close $fh;
        POSIX::_exit(0);
    }
    ok(wait_for(sub { $t->psql("SELECT count(*) FROM pg_stat_activity "
        . "WHERE query LIKE '%mr-t79-waits%' AND state = 'active' "
        . "AND pid <> pg_backend_pid()") > 0 }, 10, 0.05), $name);
    return $pid;
}

# psql locks the row of $table $id, then, once a batch waits for it,
# the account $org with a lock wait of 500 ms: 'got' if it had it
sub lock_then_account {
    my ($table, $id, $org, $out) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return other_txn("SELECT 1 FROM $table WHERE id = '$id' FOR UPDATE",
        waits_for_row($table), "SET LOCAL lock_timeout = '500ms'; "
        . "SELECT 'got' FROM mr_accounts WHERE org = '$org' FOR UPDATE",
        $out, "psql locked the row of $table");
}

# psql locks the account $org; once a batch waits for it at its end
# (having written its executions), $then
sub hold_account {
    my ($org, $then, $out, $name, $end) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return other_txn("SELECT 1 FROM mr_accounts WHERE org = '$org' "
        . "FOR UPDATE", waits_for_row('mr_accounts', 1), $then, $out,
        $name, $end);
}

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh> // '';
}

{
    my $acc = $t->new_account(credit => '10.00');
    my $key = $acc->{key};
    my $out = $t->prefix . '/t79-lock.out';

    # a cancel: read unlocked, its execution locked, its account at the end
    my $x = $t->create_exec($key, $t->exec_body(model => 'm-held'));
    is($x->{status}, 202, 'm-held: created');
    my $id = $x->{json}{id};

    my $pid = lock_then_account('mr_executions', $id, $acc->{org}, $out);
    my $c = $t->req(POST => "/v1/executions/$id/cancel", auth($key));
    waitpid $pid, 0;
    is($c->{status}, 200, 'the cancel, once psql committed');
    is($c->{json}{status}, 'CANCELLED', '... CANCELLED');
    like(slurp($out), qr/^got$/m,
        'a cancel waiting for its execution holds no account lock')
        or diag slurp($out);

    # a retry of a delivery: locked as read, the delivery before the account
    my $wh = $t->req(POST => '/v1/webhooks/endpoints', auth($key),
        { url => $rc->url('/hook'), events => [ 'execution.cancelled' ] });
    is($wh->{status}, 201, 'an endpoint') or diag $wh->{body};
    my $y = $t->create_exec($key, $t->exec_body(model => 'm-held'));
    $t->req(POST => "/v1/executions/$y->{json}{id}/cancel", auth($key));
    my @got = $rc->wait_requests(1, path => '/hook', timeout => 15);
    is(scalar @got, 1, 'its execution.cancelled was delivered');
    my $dlv = $t->psql("SELECT id FROM mr_deliveries WHERE exec_id = "
        . "'$y->{json}{id}'");
    ok($dlv, "the delivery $dlv");

    $pid = lock_then_account('mr_deliveries', $dlv, $acc->{org}, $out);
    my $r = $t->req(POST => "/v1/webhooks/deliveries/$dlv/retry", auth($key));
    waitpid $pid, 0;
    is($r->{status}, 202, 'the retry, once psql committed') or diag $r->{body};
    like(slurp($out), qr/^got$/m,
        'a retry waiting for its delivery holds no account lock')
        or diag slurp($out);
    unlike(pg_log_from(0), qr/deadlock detected/,
        'PostgreSQL broke no deadlock');
}

# ------------------------- 3: outcomes over a lowered limit are not checked

{
    my $acc = $t->new_account(credit => '10.00');
    my $key = $acc->{key};
    my $org = $acc->{org};

    $rc->set('/held', json => $CHAT, hold => 'h3');
    my @ids = map {
        $t->create_exec($key, $t->exec_body(model => 'm-wait'))->{json}{id}
    } 1 .. 6;
    is(scalar(grep { defined } @ids), 6, 'six m-wait executions');
    my @sent = $rc->wait_requests(6, path => '/held', timeout => 20);
    is(scalar @sent, 6, 'all six sent to the provider, held there');

    my $before = $t->admin(GET => "/accounts/$org")->{json}{usage}{bytes};
    my $l = $t->admin(POST => "/accounts/$org/limits", { bytes => 1 });
    is($l->{status}, 200, 'the operator lowers the limit of bytes to 1');

    # the outcomes come while creates of the same account are refused
    # (a refused create decided nothing: its batch is not checked either);
    # psql holds the account for half a second once the first outcome's
    # batch waits for it, so that the worker's next batch has both
    my $off = -s $PGLOG;
    my $out = $t->prefix . '/t79-limit.out';
    my $pid = hold_account($org, "SELECT pg_sleep(0.5)", $out,
        'psql holds the account');
    my @refused = $t->parallel(4, sub {
        my $n = 0;
        for (1 .. 25) {
            my $r = $t->create_exec($key, $t->exec_body(model => 'm-held'));
            $n++ if $r->{status} == 403
                && ($r->{json}{error}{code} // '') eq 'ACCOUNT_LIMIT_EXCEEDED';
        }
        return $n;
    }, during => sub { $rc->release('h3') }, timeout => 120);
    is(0 + grep({ ($_ // 0) eq '25' } @refused), 4,
        'meanwhile, 100 creates refused: over the limit');
    waitpid $pid, 0;
    unlike(slurp($out), qr/error/, 'an outcome waited for the account')
        or diag slurp($out);
    my $e = $t->wait_terminal($key, \@ids, 60);
    is(scalar(grep { ($e->{$_}{status} // '') eq 'COMPLETED' } @ids), 6,
        'the six COMPLETED over the limit');
    my $after = $t->admin(GET => "/accounts/$org")->{json}{usage}{bytes};
    ok($after > $before && $after > 1,
        "their use grew ($before to $after bytes)");
    unlike(pg_log_from($off), qr/lost a race/,
        'no outcome was checked against the limit (no batch made again)');
    my $v = $t->verify($org);
    ok($v->{ok}, 'verify ok') or diag explain $v;
    money_is($t->balance($key)->{balance}, '9.94',
        'balance: 0.01 per completion');
}

# ------------- 4: a create's hold, checked again against the account as it is

{
    my $acc = $t->new_account(credit => '1.00');
    my $key = $acc->{key};
    my $org = $acc->{org};
    my $out = $t->prefix . '/t79-take.out';

    # psql holds the account's row; a create reads it unlocked (1.00
    # available), then waits for it at its end; psql debits all but 0.005
    # (below the hold of 0.012) and commits: the create must be refused
    my $pid = hold_account($org,
        "UPDATE mr_accounts SET debited = debited + balance - held - 5000, "
        . "balance = held + 5000 WHERE org = '$org' RETURNING 'taken'",
        $out, 'psql holds the account');
    my $r = $t->create_exec($key, $t->exec_body(model => 'm-held'));
    waitpid $pid, 0;
    like(slurp($out), qr/^taken$/m, 'psql took the balance meanwhile')
        or diag slurp($out);
    is($r->{status}, 402, 'the create that read the balance before: 402')
        or diag $r->{body};
    is($r->{json}{error}{code}, 'INSUFFICIENT_BALANCE',
        '... INSUFFICIENT_BALANCE');
    my $v = $t->verify($org);
    ok($v->{ok}, 'verify ok') or diag explain $v;
    money_is($t->balance($key)->{held}, '0.00', 'nothing held');
    like(pg_log_from(0), qr/lost a race/,
        'its batch was made again, locked (PostgreSQL logged the race)');
}

# ---------- 4b: a create's bytes, checked again against the account as it is

{
    my $acc = $t->new_account(credit => '10.00');
    my $key = $acc->{key};
    my $org = $acc->{org};
    my $out = $t->prefix . '/t79-room.out';

    my $l = $t->admin(POST => "/accounts/$org/limits", { bytes => 100000 });
    is($l->{status}, 200, 'a limit of 100,000 bytes');
    my $used = $t->psql("SELECT used_bytes FROM mr_accounts "
        . "WHERE org = '$org'");

    # psql, as another node's creates, fills the room while a create
    # that read it free waits for the account: the create is refused
    my $pid = hold_account($org, "UPDATE mr_accounts SET used_bytes = "
        . "99990 WHERE org = '$org' RETURNING 'filled'", $out,
        'psql holds the account');
    my $r = $t->create_exec($key, $t->exec_body(model => 'm-held'));
    waitpid $pid, 0;
    like(slurp($out), qr/^filled$/m, 'psql took the room meanwhile')
        or diag slurp($out);
    is($r->{status}, 403, 'the create that read the room before: 403')
        or diag $r->{body};
    is($r->{json}{error}{code}, 'ACCOUNT_LIMIT_EXCEEDED',
        '... ACCOUNT_LIMIT_EXCEEDED');
    $t->psql("UPDATE mr_accounts SET used_bytes = $used WHERE org = '$org'");
    ok($t->verify($org)->{ok}, 'verify ok (its use given back)');
}

# ------- 5: a cancel and an outcome lock their account only at their end

{
    my $acc = $t->new_account(credit => '10.00');
    my $key = $acc->{key};
    my $org = $acc->{org};
    my $out = $t->prefix . '/t79-end.out';

    my $x = $t->create_exec($key, $t->exec_body(model => 'm-held'));
    is($x->{status}, 202, 'm-held: created');
    my $pid = hold_account($org, "SELECT 'waited'", $out,
        'psql holds the account');
    my $c = $t->req(POST => "/v1/executions/$x->{json}{id}/cancel",
        auth($key));
    waitpid $pid, 0;
    like(slurp($out), qr/^waited$/m,
        'the cancel waited for its account at its end, not as it read it')
        or diag slurp($out);
    is($c->{json}{status}, 'CANCELLED', '... then CANCELLED');

    $rc->set('/held', json => $CHAT, hold => 'h5');
    my $n0 = () = $rc->requests_to('/held');
    my $y = $t->create_exec($key, $t->exec_body(model => 'm-wait'));
    is($y->{status}, 202, 'm-wait: created');
    my @sent = $rc->wait_requests($n0 + 1, path => '/held', timeout => 20);
    is(scalar @sent, $n0 + 1, 'at the provider');
    $pid = hold_account($org, "SELECT 'waited'", $out,
        'psql holds the account');
    $rc->release('h5');
    waitpid $pid, 0;
    like(slurp($out), qr/^waited$/m,
        'the outcome waited for its account at its end, not as it read it')
        or diag slurp($out);
    my $e = $t->wait_terminal($key, [ $y->{json}{id} ], 30);
    is($e->{ $y->{json}{id} }{status}, 'COMPLETED', '... then COMPLETED');
    ok($t->verify($org)->{ok}, 'verify ok');
}

# ---- 6: what a batch inserts for an account, it inserts once it holds it

{
    my $acc = $t->new_account(credit => '10.00');
    my $key = $acc->{key};
    my $org = $acc->{org};
    my $out = $t->prefix . '/t79-ins.out';

    # the secret of an execution's webhook_url, made by its first
    # terminal event: another transaction that holds the account may
    # insert it at once (with the insert before the account's lock, it
    # waited for the batch, which waited for the account: a deadlock)
    is($t->psql("SELECT count(*) FROM mr_whsecrets WHERE org = '$org'"),
        0, 'the account has no secret yet');
    my $x = $t->create_exec($key, $t->exec_body(model => 'm-held',
        webhook_url => $rc->url('/wh6')));
    is($x->{status}, 202, 'm-held with a webhook_url: created');
    my $pid = hold_account($org, "SET LOCAL lock_timeout = '500ms'; "
        . "INSERT INTO mr_whsecrets (org, secret) VALUES ('$org', 'x') "
        . "ON CONFLICT DO NOTHING RETURNING 'inserted'", $out,
        'psql holds the account', 'ROLLBACK');
    my $c = $t->req(POST => "/v1/executions/$x->{json}{id}/cancel",
        auth($key));
    waitpid $pid, 0;
    like(slurp($out), qr/^inserted$/m,
        'the batch had not inserted the secret while it waited')
        or diag slurp($out);
    is($c->{json}{status}, 'CANCELLED', '... then CANCELLED');
    is($t->psql("SELECT count(*) FROM mr_whsecrets WHERE org = '$org'"),
        1, 'the secret is there');
    my @got = $rc->wait_requests(1, path => '/wh6', timeout => 15);
    is(scalar @got, 1, 'execution.cancelled delivered to the webhook_url');

    # an idempotency key
    my $body = $t->exec_body(model => 'm-held');
    $pid = hold_account($org, "SET LOCAL lock_timeout = '500ms'; "
        . "INSERT INTO mr_idem (org, key, exec_id, created_ms) VALUES "
        . "('$org', '$body->{idempotency_key}', 'exec_x', 0) "
        . "ON CONFLICT DO NOTHING RETURNING 'inserted'", $out,
        'psql holds the account', 'ROLLBACK');
    my $y = $t->create_exec($key, $body);
    waitpid $pid, 0;
    like(slurp($out), qr/^inserted$/m,
        'the batch had not inserted the idempotency key while it waited')
        or diag slurp($out);
    is($y->{status}, 202, '... then created');
    my $again = $t->create_exec($key, $body);
    is($again->{json}{id}, $y->{json}{id}, 'its key replays it');
    ok($t->verify($org)->{ok}, 'verify ok');
}

# ---- 7: an account's first secret, made by two batches at once: one wins

{
    my $acc = $t->new_account(credit => '10.00');
    my $key = $acc->{key};
    my $org = $acc->{org};
    my $out = $t->prefix . '/t79-secret.out';
    my $S = 'whsec_' . MIME::Base64::encode_base64('s' x 32, '');

    # psql, as another node's batch, makes the account's secret while a
    # cancel that read none (and made one) waits for the account: the
    # cancel's batch is made again, and its event is signed with psql's
    my $x = $t->create_exec($key, $t->exec_body(model => 'm-held',
        webhook_url => $rc->url('/wh7')));
    is($x->{status}, 202, 'm-held with a webhook_url: created');
    my $pid = hold_account($org, "INSERT INTO mr_whsecrets (org, secret) "
        . "VALUES ('$org', '$S') RETURNING 'inserted'", $out,
        'psql holds the account');
    my $c = $t->req(POST => "/v1/executions/$x->{json}{id}/cancel",
        auth($key));
    waitpid $pid, 0;
    like(slurp($out), qr/^inserted$/m, 'psql made the secret meanwhile')
        or diag slurp($out);
    is($c->{json}{status}, 'CANCELLED', 'the cancel, then CANCELLED');
    is($t->req(GET => '/v1/webhooks/default/secret', auth($key))
        ->{json}{secret}, $S, 'the account\'s secret is the one made first');
    my ($d) = $rc->wait_requests(1, path => '/wh7', timeout => 15);
    ok($d, 'execution.cancelled delivered to the webhook_url');
    is_deeply([ signature_problems($d // {}, $S) ], [],
        '... signed with the secret stored, not the one that lost');

    # the secret asked for (a batch that locks its account as it reads
    # it): read once the account is locked, it is the one made meanwhile
    my $oth = $t->new_account(credit => '1.00');
    my $o = $oth->{org};
    $pid = other_txn("SELECT 1 FROM mr_accounts WHERE org = '$o' "
        . "FOR UPDATE", waits_for_row('mr_accounts'),
        "INSERT INTO mr_whsecrets (org, secret) VALUES ('$o', '$S') "
        . "RETURNING 'inserted'", $out, 'psql holds the other account');
    my $g = $t->req(GET => '/v1/webhooks/default/secret', auth($oth->{key}));
    waitpid $pid, 0;
    like(slurp($out), qr/^inserted$/m, 'psql made its secret meanwhile')
        or diag slurp($out);
    is($g->{json}{secret}, $S,
        'the secret answered is the one stored, made meanwhile');
}

$t->done;

