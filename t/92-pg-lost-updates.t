# PostgreSQL: two races of batches on different workers or nodes, each of
# which lost an update, made one at a time with psql holding the rows.
#
#  1. An idempotency key committed by one batch while another, which read
#     the key (none) before it locked the account, waited for the
#     account: the second made a second execution with a second hold and
#     bound the key to it.  A batch that locks its accounts as it reads
#     them (here: a create in one batch with a credit, which always
#     locks) now reads its keys once it holds them.  Two nodes, one
#     worker each: psql holds account A and account Z; node 0's create
#     (key K) waits for A at its end; node 1's create on Z waits for Z,
#     so that node 1's next batch gathers the create with K and a credit;
#     psql lets Z go, that batch reads K (none, before the fix) and waits
#     for A; psql lets A go.  Both creates answer the same execution,
#     and the account holds once.
#  2. Two sweepers that read the same old events: each freed their bytes
#     from the account, the second after the first had deleted them, so
#     the account's counted use went below what it keeps (verify failed).
#     The sweep now locks the events it deletes.  Two workers; once the
#     deliveries are purged and before the events are, psql holds the
#     account; both sweepers wait (for the account, or for the events the
#     other one holds); psql lets it go.
# Before the fixes, every run: two executions for K (0.096 held), and the
# account's counted use of bytes at -3,432 once the events were purged.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use IO::Handle;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $STATUS = "    location = /status { stub_status; }\n";

# psql holds rows for seconds on a slow machine: the module waits for
# them, not for its timeout
my $http1 = <<"EOF";
modelroute_store %%STORE%%;
modelroute_store_timeout 60s;
modelroute_model demo-chat per_request=0.04 timeout=5m;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
$STATUS}
EOF

# sessions of the database waiting for a lock
sub lock_waits {
    my ($t) = @_;
    return $t->psql("SELECT count(*) FROM pg_stat_activity "
        . "WHERE datname = current_database() AND wait_event_type = 'Lock'");
}

sub activity {
    my ($t) = @_;
    return $t->psql("SELECT pid, application_name, state, wait_event_type, "
        . "wait_event, left(query, 100) FROM pg_stat_activity "
        . "WHERE datname = current_database()") . "\n"
        . $t->psql("SELECT l.pid, l.granted, l.classid, l.objid, "
        . "a.xact_start, a.backend_start, left(a.query, 60) "
        . "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        . "WHERE l.locktype = 'advisory'");
}

# a request in a child: its answer in $file
sub bg {
    my ($t, $file, @req) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        delete $t->{ua};
        my $r = eval { $t->req(@req) } // { status => 0, body => "$@" };
        if (open my $fh, '>', "$file.tmp") {
            print $fh json_encode({ status => $r->{status},
                                    json => $r->{json},
                                    body => $r->{body} });
            close $fh;
            rename "$file.tmp", $file;
        }
        POSIX::_exit(0);
    }
    return $pid;
}

sub answer {
    my ($file) = @_;
    wait_for(sub { -e $file }, 60, 0.02) or return { status => 0 };
    open my $fh, '<', $file or return { status => 0 };
    local $/;
    return json_decode(<$fh>);
}

# requests node $t is answering (its stub_status' Writing, this one too)
sub writing {
    my ($t) = @_;
    my $r = $t->req(GET => '/status');
    return $r->{body} =~ /Writing: (\d+)/ ? $1 : -1;
}

# ------------------------------------------------ 1: an idempotency key

{
    my @n = (MR::Test->new(store => 'postgres', http => $http1,
                           workers => 1, timeout => 60));
    push @n, MR::Test->new(store => 'postgres', db => $n[0]->db,
                           http => $http1, workers => 1, timeout => 60);
    $_->start for @n;
    my $dir = $n[0]->prefix;

    my $a = $n[0]->new_account(credit => '10.00');
    my $z = $n[0]->new_account(credit => '10.00');
    my $y = $n[0]->new_account(credit => '10.00');
    my $body = $n[0]->exec_body(idempotency_key => 'k-race');

    my $ha = $n[0]->psql_hold('mr-t92-a',
        "SELECT 1 FROM mr_accounts WHERE org = '$a->{org}' FOR UPDATE");
    my $hz = $n[0]->psql_hold('mr-t92-z',
        "SELECT 1 FROM mr_accounts WHERE org = '$z->{org}' FOR UPDATE");

    my @pids;
    push @pids, bg($n[0], "$dir/r1", POST => '/v1/executions',
        auth($a->{key}), $body);
    ok(wait_for(sub { lock_waits($n[0]) == 1 }, 20, 0.02),
        "node 0's create with K waits for the account");

    push @pids, bg($n[1], "$dir/b1", POST => '/v1/executions',
        auth($z->{key}), $n[1]->exec_body);
    ok(wait_for(sub { lock_waits($n[0]) == 2 }, 20, 0.02),
        "node 1's create on Z waits for Z");

    push @pids, bg($n[1], "$dir/r2", POST => '/v1/executions',
        auth($a->{key}), $body);
    push @pids, bg($n[1], "$dir/q", POST => "/admin/accounts/$y->{org}/credit",
        {}, { amount => '1.00' });
    ok(wait_for(sub { writing($n[1]) >= 4 }, 20, 0.02),
        'node 1 has the create with K and a credit queued behind it');

    MR::Test::psql_release($hz);
    is(answer("$dir/b1")->{status}, 202, 'Z let go: the create on Z');
    ok(wait_for(sub { lock_waits($n[0]) == 2 }, 20, 0.02),
        "node 1's batch (the create with K, the credit) waits for A")
        or diag activity($n[0]);

    MR::Test::psql_release($ha);
    my ($r1, $r2, $q) = map { answer("$dir/$_") } qw(r1 r2 q);
    waitpid $_, 0 for @pids;

    is($r1->{status}, 202, "node 0's create: 202") or diag $r1->{body};
    ok($r2->{status} == 202 || $r2->{status} == 200,
        "node 1's create with the same key: $r2->{status}")
        or diag $r2->{body};
    is($q->{status}, 200, 'the credit in its batch') or diag $q->{body};
    is($r2->{json}{id}, $r1->{json}{id},
        'the same key answers the same execution on both nodes');
    my $v = $n[1]->verify($a->{org});
    ok($v->{ok}, 'verify exact') or diag explain $v;
    is($v->{executions}, 1, 'one execution for the key');
    is(micros($n[0]->balance($a->{key})->{held} // 'none'), 48_000,
        'one hold (0.04 x 1.2)');

    $_->stop for @n;
    $_->check_log for @n;
}

# ------------------------------------------------ 2: the sweep of events

{
    my $rc = MR::Receiver->new;
    $rc->start;
    my $t = MR::Test->new(store => 'postgres', workers => 2, timeout => 60,
        http => "modelroute_sweep_interval 100ms;\n"
            . "modelroute_retention 1s;\n"
            . "modelroute_webhook_max_age 8s;\n"
            . "modelroute_webhook_retry 1s;\n"
            . "modelroute_webhook_timeout 2s;\n"
            . "modelroute_webhook_allow_private on;\n" . $http1);
    $t->start;

    my $a = $t->new_account(credit => '10.00');
    my $w = wh_create($t, $a->{key}, { url => $rc->url('/ok') });
    is($w->{status}, 201, 'an endpoint') or diag $w->{body};
    my $N = 20;
    my $made = 0;
    for (1 .. $N) {
        my $r = $t->req(POST => "/v1/webhooks/endpoints/$w->{json}{id}/test",
            auth($a->{key}));
        $made++ if $r->{status} == 202;
    }
    is($made, $N, "$N test events");
    is(scalar $rc->wait_requests($N, path => '/ok', timeout => 30), $N,
        'all delivered');
    ok(wait_for(sub { $t->store_entries('dlv') == 0 }, 20, 0.05),
        'the retention purged the deliveries');
    is($t->store_entries('event'), $N,
        'the events are kept until their max age');

    my $h = $t->psql_hold('mr-t92-sweep',
        "SELECT 1 FROM mr_accounts WHERE org = '$a->{org}' FOR UPDATE");
    ok(wait_for(sub { lock_waits($t) == 2 }, 20, 0.02),
        "both workers' sweeps wait, for the account or the events");
    MR::Test::psql_release($h);

    ok(wait_for(sub { $t->store_entries('event') == 0 }, 20, 0.05),
        'the events are purged');
    my $v = $t->verify($a->{org});
    ok($v->{ok}, "verify exact: the events' bytes freed once")
        or diag explain $v;

    $t->stop;
    $t->check_log;
}

done_testing;
