# Every store operation does bounded work, whatever a tenant piled up.
#   - A filtered list looks at no more than 1,000 executions per request:
#     when it stops there, has_more is true and next_starting_after says
#     where the next page starts (the client follows it to the match).
#   - A delivery keeps its last 16 attempts, however often it is retried.
#   - Deliveries parked for an inactive endpoint fail once older than
#     modelroute_webhook_max_age (then the retention purges them).
#   - DELETE of an endpoint with many pending deliveries walks none of
#     them: they are dropped in the background and the account's use
#     goes back down.
#   - An event fans out to at most the account's endpoint limit.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);
use MR::Receiver qw(:all);

my $http = "modelroute_webhook_allow_private on;\n"
    . "modelroute_webhook_retry 200ms;\n"
    . "modelroute_webhook_max_age 3s;\n"
    . "modelroute_webhook_timeout 2s;\n"
    . "modelroute_sweep_interval 200ms;\n";
my $t = MR::Test->new(extra_http => $http);
$t->start;
my $rc = MR::Receiver->new;
$rc->start;

# ---------------------------------------------------------------- lists
my $acc = $t->new_account(credit => '1000.00');
my $key = $acc->{key};

# the oldest: one demo-image execution; then 2,400 demo-chat ones
my $img = $t->create_exec($key, $t->exec_body(model => 'demo-image',
    input => { prompt => 'a cat' }))->{json}{id};
ok($img, 'one demo-image execution');
my @res = $t->parallel(4, sub {
    my ($i) = @_;
    my $ok = 0;
    for my $chunk (0 .. 11) {
        my @msg = map {
            http_message(POST => '/v1/executions',
                { %{ auth($key) }, 'Content-Type' => 'application/json' },
                json_encode({ model => 'demo-chat', input => {},
                    idempotency_key => "b-$i-$chunk-$_" }), $_ == 50);
        } 1 .. 50;
        $ok += grep { $_->{status} == 202 } $t->raw_all(join '', @msg);
    }
    return $ok;
});
my $made = 0;
$made += $_ for grep { !ref } @res;
is($made, 2400, '2,400 demo-chat executions');

my $r = $t->req(GET => '/v1/executions?model=demo-image&limit=10',
    auth($key));
is($r->{status}, 200, 'a filtered list: 200');
is(scalar @{ $r->{json}{data} // [1] }, 0,
    'the first page found nothing within its budget');
ok($r->{json}{has_more}, '... has_more: the client goes on');
like($r->{json}{next_starting_after} // '', qr/^exec_[0-9a-f]{44}$/,
    '... next_starting_after: where the next page starts');

my ($pages, @found) = (1);
while ($r->{json}{has_more} && $pages < 20) {
    my $after = $r->{json}{next_starting_after};
    $r = $t->req(GET => "/v1/executions?model=demo-image&limit=10"
        . "&starting_after=$after", auth($key));
    $pages++;
    push @found, @{ $r->{json}{data} // [] };
}
is(scalar @found, 1, "following the cursor finds it ($pages pages)");
is($found[0]{id}, $img, '... the demo-image execution');
ok(!$r->{json}{has_more}, '... and the list ends');
ok(!defined $r->{json}{next_starting_after}, '... next_starting_after null');
is($pages, 3, 'three pages for 2,401 executions, 1,000 looked at each');

# an unfiltered list is unchanged: pages of limit, cursor = the last id
$r = $t->req(GET => '/v1/executions?limit=5', auth($key));
is(scalar @{ $r->{json}{data} }, 5, 'unfiltered: a full page');
is($r->{json}{next_starting_after}, $r->{json}{data}[-1]{id},
    'unfiltered: next_starting_after is the last id');
is(scalar($t->list_all($key, 'status=PENDING')), 2401,
    'status=PENDING followed to the end: every one');

# ---------------------------------------------------------------- attempts
# an execution's webhook_url (no endpoint to deactivate) that fails
$rc->set('/fail', status => 500);
my $fx = $t->create_exec($key, $t->exec_body(
    webhook_url => $rc->url('/fail')))->{json}{id};
$t->req(POST => "/v1/executions/$fx/cancel", auth($key));

sub fail_delivery {
    return wait_for(sub {
        my ($d) = @{ wh_exec_deliveries($t, $key, $fx) // [] };
        return $d && $d->{status} eq 'failed' ? $d : undef;
    }, 10, 0.05);
}

my $dl;
for my $i (1 .. 12) {
    $dl = fail_delivery() or last;
    $t->req(POST => "/v1/webhooks/deliveries/$dl->{id}/retry", auth($key));
}
$dl = fail_delivery() // {};
my $sent = $rc->count(path => '/fail');
ok($sent > 16, "a delivery retried again and again ($sent attempts)");
is(scalar @{ $dl->{attempts} // [] }, 16, 'it keeps its last 16 attempts');

# ---------------------------------------------------------------- parked
{
    my $gone = wh_create($t, $key, { url => $rc->url('/gone') });
    my $id = $gone->{json}{id};
    $rc->set('/gone', status => 410);
    $t->req(POST => "/v1/webhooks/endpoints/$id/test", auth($key));
    ok(wait_for(sub { !wh_get($t, $key, $id)->{is_active} }, 10, 0.1),
        '410: the endpoint is inactive');
    my $x = $t->req(POST => "/v1/webhooks/endpoints/$id/test",
        auth($key))->{json};
    my $d = wh_delivery($t, $key, $id, $x->{delivery_id});
    is($d->{status}, 'pending', 'a delivery for it is parked (pending)');
    $d = wait_delivery($t, $key, $id, $x->{delivery_id},
        sub { $_[0]{status} ne 'pending' }, 15) // {};
    is($d->{status}, 'failed', 'past modelroute_webhook_max_age it fails');
    is_deeply($d->{attempts}, [], '... without an attempt');
    is($rc->count(path => '/gone'), 1, 'nothing more was sent to it');
}

# ---------------------------------------------------------------- delete
# (the deliveries made below stay pending however long making them takes:
# past a max age of 3 s they would fail, and a DELETE drops pending ones)
$t->write_config(extra_http => $http =~ s/max_age 3s/max_age 1h/r);
$t->reload;
{
    my $b = $t->new_account(credit => '10.00');
    my $slow = wh_create($t, $b->{key}, { url => $rc->url('/slow') });
    my $id = $slow->{json}{id};
    is($t->req(PATCH => "/v1/webhooks/endpoints/$id", auth($b->{key}),
        { is_active => JSON::PP::false })->{status}, 200,
        'an endpoint made inactive: its deliveries wait');
    my @d;
    for (1 .. 300) {
        my $x = $t->req(POST => "/v1/webhooks/endpoints/$id/test",
            auth($b->{key}))->{json} // {};
        push @d, $x->{delivery_id} if $x->{delivery_id};
    }
    is(scalar @d, 300, '300 deliveries waiting for it');
    my $before = $t->verify($b->{org})->{usage}{bytes};
    is($t->req(DELETE => "/v1/webhooks/endpoints/$id", auth($b->{key}))
        ->{status}, 200, 'DELETE of the endpoint: 200');
    is_error($t->req(POST => "/v1/webhooks/deliveries/$d[-1]/retry",
        auth($b->{key})), 404, 'NOT_FOUND', 'its deliveries are gone');
    ok(wait_for(sub {
        my $v = $t->verify($b->{org});
        return $v->{ok} && $v->{usage}{bytes} < $before - 300 * 300;
    }, 20, 0.2), 'they are dropped in the background: the use goes down');
    is($rc->count(path => '/slow'), 0, 'nothing was sent to it');
    my $v = $t->verify($b->{org});
    ok($v->{ok}, 'verify after the drop') or diag explain $v;
    is($v->{usage}{endpoints}, 0, 'no endpoint counted');
}

ok($t->verify($acc->{org})->{ok}, 'verify at the end');

$t->done;
$rc->stop;
