package MR::Metrics;

# Reading the gateway's Prometheus metrics in the tests (core Perl only).
#
#   my $m = MR::Metrics::parse($text);        # {series => value}
#   metric($m, 'modelroute_errors_total', code => 'NOT_FOUND');
#   msum($m, 'modelroute_executions_finished_total', status => 'FAILED');
#   my ($ok, $out) = promtool_check($text);   # promtool check metrics
#
# A series key is the name and its labels sorted by name:
# 'name{a="1",b="2"}'.

use strict;
use warnings;

use File::Temp qw(tempfile);

use Exporter 'import';
our @EXPORT_OK = qw(parse_metrics metric msum promtool promtool_check
    series);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# The samples of a text exposition: {key => value}; croaks on a line that
# is not a comment, a blank or a sample.
sub parse_metrics {
    my ($text) = @_;
    my %m;
    for my $l (split /\n/, $text // '') {
        next if $l eq '' || $l =~ /^#/;
        $l =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
            or die "not a sample line: '$l'\n";
        my ($name, $labels, $v) = ($1, $2 // '', $3);
        my %l;
        while ($labels =~ /\G([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gc)
        {
            $l{$1} = $2;
        }
        $m{ series($name, %l) } = $v eq '+Inf' ? 9**9**9 : $v + 0;
    }
    return \%m;
}

sub series {
    my ($name, %l) = @_;
    return $name unless %l;
    return $name . '{'
        . join(',', map { "$_=\"$l{$_}\"" } sort keys %l) . '}';
}

# One series' value (undef if absent).
sub metric {
    my ($m, $name, %l) = @_;
    return $m->{ series($name, %l) };
}

# The sum of the series of $name whose labels include %match.
sub msum {
    my ($m, $name, %match) = @_;
    my $s = 0;
    KEY: for my $k (keys %$m) {
        my ($n, $labels) = $k =~ /^([^{]+)(?:\{(.*)\})?$/;
        next unless $n eq $name;
        for my $l (keys %match) {
            next KEY
                unless ($labels // '') =~ /(?:^|,)\Q$l\E="\Q$match{$l}\E"/;
        }
        $s += $m->{$k};
    }
    return $s;
}

# The path of promtool (Debian's prometheus package), or undef.
sub promtool {
    for my $d (split /:/, $ENV{PATH} // '/usr/bin') {
        return "$d/promtool" if -x "$d/promtool";
    }
    return -x '/usr/bin/promtool' ? '/usr/bin/promtool' : undef;
}

# (1, output) if `promtool check metrics` accepts the text without a
# problem, else (0, output).
sub promtool_check {
    my ($text) = @_;
    my $tool = promtool() or return (0, 'promtool not found');
    my ($fh, $file) = tempfile('mr-metrics-XXXXXX', TMPDIR => 1,
        UNLINK => 1);
    print $fh $text;
    close $fh;
    my $out = `$tool check metrics < $file 2>&1`;
    my $rc = $? >> 8;
    return ($rc == 0 && $out !~ /\S/ ? 1 : 0, $out);
}

1;
