# The sweeper: a storm of deadlines, idempotency keys freed from the store,
# retention, all while the API keeps answering.
#
# 10,000 executions are past their deadline at once: they are created
# with a sweep interval of an hour (so that none expires while the others
# are being created, however long that takes), then a reload brings a
# sweep interval of 200 ms.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use MR::Test qw(:all);

my $common = "modelroute_idempotency_ttl 2s;\nmodelroute_retention off;\n";
my $t = MR::Test->new(extra_http => $common
    . "modelroute_sweep_interval 1h;\n");
$t->start;

# ---- 10,000 executions past their deadline at once
my $N = 10_000;
my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};

my @res = $t->parallel(20, sub {
    my ($i) = @_;
    my ($ok, $bad) = (0, 0);

    # pipelined chunks of 50, each a second from its deadline
    for my $chunk (0 .. $N / 20 / 50 - 1) {
        my $tmo = 1;
        my @msg = map {
            my $j = $chunk * 50 + $_;
            http_message(POST => '/v1/executions',
                { %{ auth($key) }, 'Content-Type' => 'application/json' },
                json_encode({ model => 'demo-chat', input => {},
                    idempotency_key => "storm-$i-$j",
                    timeout_seconds => $tmo }), $_ == 50);
        } 1 .. 50;
        for my $r ($t->raw_all(join '', @msg)) {
            $r->{status} == 202 ? $ok++ : $bad++;
        }
    }
    return { ok => $ok, bad => $bad };
}, timeout => 120);

my ($ok, $bad) = (0, 0);
for (@res) {
    diag "client died: $_->{died}" if $_->{died};
    $ok += $_->{ok} // 0;
    $bad += $_->{bad} // 1;
}
is($ok, $N, "$N creates accepted");
is($bad, 0, 'no refusals');

money_is($t->balance($key)->{held}, '480.00', 'every hold is open');

# a sweeper every 200 ms: every deadline has passed; while they expire,
# the API answers every poll
$t->write_config(extra_http => $common
    . "modelroute_sweep_interval 200ms;\n");
$t->reload;
my ($polls, $bad_polls, $during) = (0, 0, 0);
my $all = wait_for(sub {
    my $b = $t->req(GET => '/v1/balance', auth($key));
    $polls++;
    $bad_polls++ if $b->{status} != 200;
    my $held = $b->{status} == 200 ? micros($b->{json}{held}) : -1;
    $during++ if $held > 0 && $held < 480_000_000;
    return $held == 0;
}, 60, 0.05);
ok($all, 'every hold released by the sweeper');
is($bad_polls, 0, "the API answered every poll ($polls polls, $during "
    . 'while the expiry was under way)');

my $v = $t->verify($acc->{org});
ok($v->{ok}, 'ledger invariant after the storm');
is($v->{open_executions}, 0, 'no open execution left');

my $page = $t->req(GET => '/v1/executions?status=EXPIRED&limit=3', auth($key));
is(scalar @{ $page->{json}{data} // [] }, 3, 'listed as EXPIRED');
my $e = $page->{json}{data}[0] // {};
is($e->{error}{code}, 'GENERATION_TIMEOUT', 'error code of an expiry');
money_is($e->{cost}, '0.00', 'nothing charged');
ok($e->{completed_at}, 'completed_at set');

# ---- idempotency keys past their lifetime leave the store
my $acc2 = $t->new_account(credit => '10.00');
my $r1 = $t->create_exec($acc2->{key}, { model => 'demo-chat',
    input => { a => 1 }, idempotency_key => 'reuse-me' });
is($r1->{status}, 202, 'a first execution');
my $freed = wait_for(sub {
    my $r = $t->create_exec($acc2->{key}, { model => 'demo-chat',
        input => { a => 2 }, idempotency_key => 'reuse-me' });
    return $r->{status} == 202 ? $r : undef;
}, 15, 0.2);
ok($freed && $freed->{json}{id} ne $r1->{json}{id},
    'after the lifetime the key makes a new execution');

# the sweeper removed the old binding: the store has one key per account
# (the store itself: through the API an expired key and a removed one
# look the same, only the space they take differs)
SKIP: {
    skip 'mdb_stat (lmdb-utils) not installed', 1
        unless defined $t->store_entries('idem');
    my $count = wait_for(sub {
        my $n = $t->store_entries('idem');
        return defined $n && $n <= 1 ? "$n" : undef;
    }, 15, 0.2);
    ok(defined $count, 'expired idempotency keys purged from the store')
        or diag 'entries: ' . ($t->store_entries('idem') // '?');
}

# ---- modelroute_retention off: the sweeps that freed the key (seconds
# after the expiry storm) purged no terminal execution
my $kept = $t->verify($acc->{org});
is($kept->{executions}, $N, "retention off: the $N EXPIRED executions are "
    . 'all kept');
is(scalar @{ $t->req(GET => '/v1/executions?status=EXPIRED&limit=100',
    auth($key))->{json}{data} // [] }, 100, '... and listed');

$t->stop;
$t->check_log;

# ---- retention: terminal executions older than 3 s are purged
$t = MR::Test->new(extra_http => "modelroute_retention 3s;\n"
    . "modelroute_sweep_interval 200ms;\nmodelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_retry 1s;\nmodelroute_webhook_max_age 1s;\n"
    . "modelroute_webhook_timeout 1s;\n");
$t->start;

my $acc3 = $t->new_account(credit => '10.00');
my $c = $t->create_exec($acc3->{key}, $t->exec_body);
my $id = $c->{json}{id};
my $open = $t->create_exec($acc3->{key}, $t->exec_body(timeout_seconds => 60));
is($t->req(POST => "/v1/executions/$id/cancel", auth($acc3->{key}))->{status},
    200, 'cancelled');
my $gone = wait_for(sub {
    $t->get_exec($acc3->{key}, $id)->{status} == 404;
}, 20, 0.2);
ok($gone, 'a terminal execution past the retention is purged');
is($t->get_exec($acc3->{key}, $open->{json}{id})->{status}, 200,
    'an open one is kept');
my $v3 = $t->verify($acc3->{org});
ok($v3->{ok}, 'ledger invariant after purging');
is($v3->{executions}, 1, 'the purged one left the account index too');

# the webhook outbox too: a failed delivery and its event
my $closed = MR::Test::free_port();    # nobody listens there
my $wh = $t->req(POST => '/v1/webhooks/endpoints', auth($acc3->{key}),
    { url => "http://127.0.0.1:$closed/nobody-listens" });
is($wh->{status}, 201, 'an endpoint that refuses connections');
my $whid = $wh->{json}{id} // '';
my $tst = $t->req(POST => "/v1/webhooks/endpoints/$whid/test",
    auth($acc3->{key}));
is($tst->{status}, 202, 'a test event');
my $failed = wait_for(sub {
    my $l = $t->req(GET => "/v1/webhooks/endpoints/$whid/deliveries",
        auth($acc3->{key}))->{json}{data} // [];
    @$l && $l->[0]{status} eq 'failed';
}, 20, 0.2);
ok($failed, 'the delivery fails after its schedule');
my $purged = wait_for(sub {
    my $l = $t->req(GET => "/v1/webhooks/endpoints/$whid/deliveries",
        auth($acc3->{key}))->{json}{data};
    $l && !@$l;
}, 20, 0.2);
ok($purged, 'a finished delivery past the retention is purged');
SKIP: {
    skip 'mdb_stat (lmdb-utils) not installed', 1
        unless defined $t->store_entries('event');
    # (the store itself: an event is visible through the API only by its
    # deliveries, which are gone)
    my $ev = wait_for(sub {
        my $n = $t->store_entries('event');
        return defined $n && $n == 0 ? 1 : undef;
    }, 20, 0.2);
    ok($ev, 'its event too');
}

$t->done;
