# The PostgreSQL store's faults (issue 11, items 5 and 7), on a private
# PostgreSQL cluster whatever MR_STORE says:
#  - the server restarted (fast, then immediate: a crash) during a storm
#    of creates: every execution a client was told about (202) is there,
#    no idempotency key has two, and the ledger is exact (verify);
#  - the server stopped for 30 s: creates, reads and the health answer
#    get 503 SERVICE_UNAVAILABLE (retryable, the envelope, Retry-After)
#    at once, never a half-applied change; then service resumes by
#    itself, dispatch included;
#  - the store's backends terminated (pg_terminate_backend) again and
#    again under a storm: batches whose COMMIT got no answer are looked
#    up by their id; nothing acknowledged is lost, nothing is doubled.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use MR::Test qw(:all);

my $http = MR::Test::default_http();
$http =~ s{location /admin/ \{ modelroute_admin; \}}
          {location /admin/ { modelroute_admin; }
    location = /health { modelroute_health; }};

my $t = MR::Test->new(store => 'postgres', timeout => 30,
    extra_http => "modelroute_store_timeout 5s;\n", http => $http);
# the workers say when the server goes away and comes back
$t->expect_log(qr/the store cannot be reached/);
$t->start;

# A storm: $n clients, each creating for $secs s, with keys of its own;
# each create that gets no 202 is tried again with the same key until it
# does (a client that retries).  Returns, per client, the ids answered 202
# by key, and the counts of each status.
sub storm {
    my ($acc, $n, $secs, $during) = @_;
    my @res = $t->parallel($n, sub {
        my ($i) = @_;
        my (%ids, %codes);
        my $end = time + $secs;
        my $k = 0;
        while (time < $end) {
            my $key = "storm-$i-" . $k++;
            my $body = { model => 'demo-chat', input => { i => $i },
                idempotency_key => $key };
            my $try_end = time + 60;
            while (1) {
                my $r = $t->create_exec($acc->{key}, $body);
                $codes{ $r->{status} }++;
                if ($r->{status} == 202) {
                    $ids{$key} = $r->{json}{id};
                    last;
                }
                # 503 only (the envelope), or a connection error
                $codes{bad}++ unless $r->{status} == 503
                    && ($r->{json}{error}{code} // '') eq
                       'SERVICE_UNAVAILABLE'
                    || $r->{status} == 599;
                last if time > $try_end;
                sleep 0.05;
            }
        }
        return { ids => \%ids, codes => \%codes };
    }, timeout => $secs + 120, during => $during);
    return @res;
}

sub check_storm {
    my ($name, $acc, @res) = @_;
    my (%ids, %codes);
    for my $r (@res) {
        if ($r->{died}) {
            fail("$name: a client died: $r->{died}");
            next;
        }
        %ids = (%ids, %{ $r->{ids} });
        $codes{$_} += $r->{codes}{$_} for keys %{ $r->{codes} };
    }
    note "$name: " . join ', ', map { "$_: $codes{$_}" } sort keys %codes;
    ok(!$codes{bad}, "$name: only 202 and 503 answers");
    ok(scalar(keys %ids) > 0, "$name: creates were answered 202");
    my @lost = grep {
        my $r = $t->get_exec($acc->{key}, $ids{$_});
        !($r->{status} == 200 && $r->{json}{id} eq $ids{$_}
          && $r->{json}{idempotency_key} eq $_);
    } sort keys %ids;
    is(scalar @lost, 0, "$name: every execution answered 202 is there")
        or diag "lost: @lost[0 .. ($#lost < 9 ? $#lost : 9)]";
    my $v = $t->verify($acc->{org});
    ok($v->{ok}, "$name: verify ok") or diag explain $v;
    is($v->{executions}, scalar keys %ids,
        "$name: one execution per key, none more");
}

# ---------------------------------------------------------------- restart

for my $mode ('fast', 'immediate') {
    my $acc = $t->new_account(credit => '1000.00');
    my @res = storm($acc, 4, 6, sub {
        sleep 2;
        MR::Test::pg_ctl('restart', $mode);
    });
    check_storm("restart ($mode)", $acc, @res);
}

# ---------------------------------------------------------------- stopped

{
    my $acc = $t->new_account(credit => '10.00');
    my $before = $t->create_exec($acc->{key}, $t->exec_body);
    is($before->{status}, 202, 'stop: a create before');

    MR::Test::pg_ctl('stop', 'fast');
    my $stopped = time;

    # the workers learn it at their next request: then at once
    my $r = wait_for(sub {
        my $r = $t->create_exec($acc->{key}, $t->exec_body);
        $r->{status} == 503 ? $r : undef }, 15, 0.2);
    ok($r, 'stop: a create gets 503');
    my $e = $r ? is_error($r, 503, 'SERVICE_UNAVAILABLE',
        'stop: ... the envelope') : undef;
    ok($e && $e->{retryable}, 'stop: ... retryable');
    is($r && $r->{headers}{'retry-after'}, 1, 'stop: ... Retry-After');

    my $t0 = time;
    $r = $t->get_exec($acc->{key}, $before->{json}{id});
    is($r->{status}, 503, 'stop: a read gets 503');
    my $t1 = time;
    $r = $t->req(GET => '/health');
    is($r->{status}, 503, 'stop: the health answer is 503');
    cmp_ok(time - $t0, '<', 3, 'stop: ... at once, not after a timeout')
        or diag sprintf 'the read took %.3f s, the health answer %.3f s',
            $t1 - $t0, time - $t1;

    # still 503 thirty seconds on
    my @codes;
    while (time - $stopped < 30) {
        push @codes, $t->create_exec($acc->{key}, $t->exec_body)->{status};
        sleep 1;
    }
    is_deeply([ grep { $_ != 503 } @codes ], [],
        'stop: 503 for 30 s (' . scalar(@codes) . ' creates)');

    MR::Test::pg_ctl('start');
    ok(wait_for(sub {
        $t->create_exec($acc->{key}, $t->exec_body)->{status} == 202 },
        20, 0.2), 'start: creates work again, by themselves');
    ok(wait_for(sub { $t->req(GET => '/health')->{status} == 200 }, 20,
        0.2), 'start: the health answer is 200 again');
    # (the other worker may still be in its reconnect backoff: 503 there)
    my $v;
    ok(wait_for(sub { $v = eval { $t->verify($acc->{org}) } }, 20, 0.2),
        'start: verify answers (every worker back)');
    ok($v && $v->{ok}, 'start: verify ok') or diag explain $v;
    is($v->{executions}, 2, 'start: nothing half-applied: the 503s made '
        . 'nothing');
}

# ---------------------------------------------------------- terminated

{
    # (a worker that answered nothing since the server came back may still
    # be in its reconnect backoff, up to 5 s: a 503 then is retryable)
    my $acc;
    ok(wait_for(sub { $acc = eval { $t->new_account(credit => '1000.00') } },
        20, 0.2), 'terminated: an account (every worker back)');
    my $kills = 0;
    my @res = storm($acc, 4, 8, sub {
        my $end = time + 7;
        while (time < $end) {
            sleep 0.3 + rand 0.4;
            $kills += $t->psql("SELECT count(pg_terminate_backend(pid)) "
                . "FROM pg_stat_activity WHERE application_name = "
                . "'modelroute'");
        }
    });
    cmp_ok($kills, '>', 5, "terminate: $kills backends terminated");
    check_storm('terminate', $acc, @res);
}

$t->done;
