#!/usr/bin/perl
# Latency probe for bench/dispatch.sh: one execution at a time, for SECONDS:
# POST it, then GET it every 0.5 ms until it is terminal, and note when
# COMPLETED became visible. Prints one line per execution:
#   <added ms> <end-to-end ms> <status>
# added = visible - the attempt's ended_at (the provider's answer, as the
# gateway recorded it); end-to-end = visible - created_at.
#
#   perl bench/probe.pl BASE KEY MODEL SECONDS > out

use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP;
use Time::HiRes qw(time sleep);
use Time::Local qw(timegm);

my ($base, $key, $model, $seconds) = @ARGV;
die "usage: $0 BASE KEY MODEL SECONDS\n" unless $seconds;

my $ua = HTTP::Tiny->new(keep_alive => 1, timeout => 10);
my $json = JSON::PP->new->utf8;
my %h = (Authorization => "Bearer $key",
    'Content-Type' => 'application/json');
my $deadline = time + $seconds;
my $n = 0;

sub ms_of {
    my ($s) = @_;
    my ($Y, $M, $D, $h, $m, $sec, $ms) =
        $s =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(?:\.(\d+))?Z$/ or return;
    return timegm($sec, $m, $h, $D, $M - 1, $Y) * 1000 + ($ms // 0);
}

$| = 1;

while (time < $deadline) {
    $n++;
    my $body = $json->encode({ model => $model, input => { prompt => 'hi' },
        idempotency_key => "probe-$$-$n" });
    my $r = $ua->post("$base/v1/executions", { headers => \%h,
        content => $body });
    next unless $r->{status} == 202;
    my $id = $json->decode($r->{content})->{id};
    my $stop = time + 30;
    while (time < $stop) {
        my $g = $ua->get("$base/v1/executions/$id", { headers => \%h });
        my $now = time * 1000;
        my $e = eval { $json->decode($g->{content}) } or last;
        if ($e->{status} =~ /^(?:COMPLETED|FAILED|CANCELLED|EXPIRED)$/) {
            my $att = $e->{attempts}[-1] // {};
            my $ended = ms_of($att->{ended_at} // '') // $now;
            my $created = ms_of($e->{created_at});
            printf "%.2f %.2f %s\n", $now - $ended, $now - $created,
                $e->{status};
            last;
        }
        sleep 0.0005;
    }
}
